//! Delivery feedback from providers' webhooks: proving a post came from the provider, and reading
//! what it says into one event per recipient. Pure: the endpoint (`api.rs`) does the I/O.

use hmac::{Hmac, Mac};
use p256::ecdsa::VerifyingKey;
use renderer::deploy::config::Secret;
use serde::Deserialize;
use sha2::Sha256;

pub mod ses;

/// How old a signed webhook may be: Mailgun signs with the time of sending; older posts are replays.
pub const MAX_AGE_MS: i64 = 5 * 60_000;

/// `[feedback.mailgun]`: the webhook signing key, only from
/// `CONDUCTOR__FEEDBACK__MAILGUN__SIGNING_KEY`. Without it the endpoint is closed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailgunFeedback {
    pub signing_key: Option<Secret>,
}

/// `[feedback.sendgrid]`: the Signed Event Webhook's public key, as SendGrid shows it (base64 DER).
/// Not a secret; without it the endpoint is closed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendgridFeedback {
    pub public_key: Option<String>,
}

/// `[feedback.postmark]`: Postmark signs nothing; its webhook URL carries basic-auth credentials.
/// The password only from `CONDUCTOR__FEEDBACK__POSTMARK__PASSWORD`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostmarkFeedback {
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// `[feedback.ses]`: SES posts its feedback to SNS topics; the conductor accepts deliveries only from
/// these, signed by SNS. Without topics the endpoint is closed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SesFeedback {
    pub topic_arns: Vec<String>,
    /// Off only for emulators that cannot sign (moto); never in production.
    pub verify_signatures: bool,
}

impl Default for SesFeedback {
    fn default() -> Self {
        Self {
            topic_arns: Vec::new(),
            verify_signatures: true,
        }
    }
}

/// `[feedback]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackConfig {
    pub mailgun: MailgunFeedback,
    pub sendgrid: SendgridFeedback,
    pub postmark: PostmarkFeedback,
    pub ses: SesFeedback,
}

impl FeedbackConfig {
    /// An empty key would "verify" anything signed with an empty key: refuse it.
    pub fn check(&self) -> Result<(), renderer::deploy::config::ConfigError> {
        use renderer::deploy::config::invalid;
        if self
            .mailgun
            .signing_key
            .as_ref()
            .is_some_and(|k| k.expose().trim().is_empty())
        {
            return Err(invalid(
                "feedback.mailgun.signing_key",
                "is empty: unset it to close the endpoint",
            ));
        }
        if let Some(k) = &self.sendgrid.public_key {
            sendgrid_key(k).map_err(|e| invalid("feedback.sendgrid.public_key", e))?;
        }
        for arn in &self.ses.topic_arns {
            let parts: Vec<&str> = arn.split(':').collect();
            if parts.len() != 6 || parts[0] != "arn" || parts[2] != "sns" || parts[5].is_empty() {
                return Err(invalid(
                    "feedback.ses.topic_arns",
                    format!("{arn:?} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"),
                ));
            }
        }
        let p = &self.postmark;
        match (&p.username, &p.password) {
            (None, None) => {}
            (Some(u), Some(pw)) => {
                if u.is_empty() || u.contains(':') {
                    return Err(invalid(
                        "feedback.postmark.username",
                        "must be non-empty and without ':'",
                    ));
                }
                if pw.expose().trim().len() < 16 {
                    return Err(invalid(
                        "feedback.postmark.password",
                        "must be at least 16 characters",
                    ));
                }
            }
            (Some(_), None) => {
                return Err(invalid(
                    "feedback.postmark.password",
                    "is required with feedback.postmark.username: set CONDUCTOR__FEEDBACK__POSTMARK__PASSWORD",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "feedback.postmark.username",
                    "is required with the password",
                ))
            }
        }
        Ok(())
    }
}

/// What a feedback event means for the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Delivered,
    /// A temporary failure: the provider keeps trying; nothing changes here.
    Deferred,
    HardBounce,
    Complaint,
    Unsubscribe,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Delivered => "delivered",
            Kind::Deferred => "deferred",
            Kind::HardBounce => "hard_bounce",
            Kind::Complaint => "complaint",
            Kind::Unsubscribe => "unsubscribe",
        }
    }

    /// Hard bounces, complaints and unsubscribes put the address on the suppression list.
    pub fn suppresses(self) -> bool {
        matches!(self, Kind::HardBounce | Kind::Complaint | Kind::Unsubscribe)
    }
}

/// One provider event about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique per event and provider: a second post with the same key changes nothing.
    pub key: String,
    pub provider: &'static str,
    pub kind: Kind,
    pub email: String,
    pub campaign_id: Option<String>,
    pub recipient_id: Option<i64>,
    pub detail: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeedbackError {
    #[error("not a webhook payload: {0}")]
    Malformed(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("signed {age_s} s ago: too old (replay?)")]
    Stale { age_s: i64 },
    #[error("event {0:?} is not one this service acts on")]
    Ignored(String),
}

#[derive(Deserialize)]
struct MailgunPost {
    signature: MailgunSignature,
    #[serde(rename = "event-data")]
    event: serde_json::Value,
}

#[derive(Deserialize)]
struct MailgunSignature {
    timestamp: String,
    token: String,
    signature: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies a Mailgun webhook and reads its event; see [`mailgun_verify`].
pub fn mailgun(raw: &[u8], signing_key: &str, now: i64) -> Result<Event, FeedbackError> {
    mailgun_verify(raw, signing_key, now)?.event()
}

/// A Mailgun post whose signature holds. The signature covers only timestamp and token, not the
/// event: the token must be spent on every verified post, whatever its event (an `opened` one
/// included), or a captured signature could carry any event for five minutes.
pub struct MailgunVerified {
    /// `mailgun:TOKEN`, the key to spend.
    pub token_key: String,
    post: MailgunPost,
}

/// Verifies a Mailgun webhook: HMAC-SHA256 of `timestamp ‖ token` with the signing key, in constant
/// time; not older than [`MAX_AGE_MS`]. `now` is the caller's clock.
pub fn mailgun_verify(
    raw: &[u8],
    signing_key: &str,
    now: i64,
) -> Result<MailgunVerified, FeedbackError> {
    let post: MailgunPost =
        serde_json::from_slice(raw).map_err(|e| FeedbackError::Malformed(e.to_string()))?;
    let s = &post.signature;
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_key.as_bytes())
        .map_err(|_| FeedbackError::BadSignature)?;
    mac.update(s.timestamp.as_bytes());
    mac.update(s.token.as_bytes());
    let expected = hex(&mac.finalize().into_bytes());
    let given = s.signature.trim().to_ascii_lowercase();
    if !crate::domain::secret::same(expected.as_bytes(), given.as_bytes()) {
        return Err(FeedbackError::BadSignature);
    }
    let signed_ms = s
        .timestamp
        .trim()
        .parse::<i64>()
        .map_err(|_| FeedbackError::Malformed("signature.timestamp is not a number".into()))?
        * 1000;
    if (now - signed_ms).abs() > MAX_AGE_MS {
        return Err(FeedbackError::Stale {
            age_s: (now - signed_ms) / 1000,
        });
    }
    Ok(MailgunVerified {
        token_key: format!("mailgun:{}", s.token),
        post,
    })
}

impl MailgunVerified {
    /// The event it carries (`Ignored` for kinds that change nothing here, such as `opened`).
    pub fn event(self) -> Result<Event, FeedbackError> {
        mailgun_event(self.post, self.token_key)
    }
}

fn mailgun_event(post: MailgunPost, key: String) -> Result<Event, FeedbackError> {
    let e = &post.event;
    let text = |path: &[&str]| {
        path.iter()
            .try_fold(e, |v, k| v.get(*k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let event =
        text(&["event"]).ok_or_else(|| FeedbackError::Malformed("no event-data.event".into()))?;
    let severity = text(&["severity"]).unwrap_or_default();
    let kind = match (event.as_str(), severity.as_str()) {
        ("delivered", _) => Kind::Delivered,
        ("failed", "permanent") => Kind::HardBounce,
        ("failed", _) => Kind::Deferred,
        ("complained", _) => Kind::Complaint,
        ("unsubscribed", _) => Kind::Unsubscribe,
        (other, _) => return Err(FeedbackError::Ignored(other.to_string())),
    };
    let email = text(&["recipient"])
        .ok_or_else(|| FeedbackError::Malformed("no event-data.recipient".into()))?;
    let vars = e.get("user-variables");
    let var = |k: &str| {
        vars.and_then(|v| v.get(k)).and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let detail = text(&["delivery-status", "description"])
        .filter(|d| !d.is_empty())
        .or_else(|| text(&["delivery-status", "message"]))
        .or_else(|| text(&["reason"]));
    Ok(Event {
        key,
        provider: "mailgun",
        kind,
        email: email.trim().to_ascii_lowercase(),
        campaign_id: var("campaign_id"),
        recipient_id: var("recipient_id").and_then(|r| r.parse().ok()),
        detail,
    })
}

/// Reads SendGrid's verification key: base64 of a DER SubjectPublicKeyInfo for P-256.
pub fn sendgrid_key(b64: &str) -> Result<VerifyingKey, String> {
    use base64::Engine;
    use p256::pkcs8::DecodePublicKey;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("is not base64: {e}"))?;
    VerifyingKey::from_public_key_der(&der)
        .map_err(|e| format!("is not a P-256 public key (base64 DER, as SendGrid shows it): {e}"))
}

/// Verifies a SendGrid Signed Event Webhook (ECDSA P-256 over SHA-256 of the timestamp header
/// followed by the raw body) and reads its events.
///
/// No freshness window: SendGrid retries a failed post for hours with the original signature. A
/// replay can only carry the very events that were signed, and each is recorded once
/// (`sg_event_id`), so replaying changes nothing.
pub fn sendgrid(
    raw: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    key: &VerifyingKey,
) -> Result<Vec<Event>, FeedbackError> {
    use base64::Engine;
    use p256::ecdsa::signature::Verifier;
    let (Some(ts), Some(sig)) = (timestamp, signature) else {
        return Err(FeedbackError::BadSignature);
    };
    let der = base64::engine::general_purpose::STANDARD
        .decode(sig.trim())
        .map_err(|_| FeedbackError::BadSignature)?;
    let sig = p256::ecdsa::DerSignature::try_from(der.as_slice())
        .map_err(|_| FeedbackError::BadSignature)?;
    let mut signed = Vec::with_capacity(ts.len() + raw.len());
    signed.extend_from_slice(ts.as_bytes());
    signed.extend_from_slice(raw);
    key.verify(&signed, &sig)
        .map_err(|_| FeedbackError::BadSignature)?;
    let events: Vec<serde_json::Value> =
        serde_json::from_slice(raw).map_err(|e| FeedbackError::Malformed(e.to_string()))?;
    let mut out = Vec::new();
    for e in &events {
        let text = |k: &str| e.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let number_or_text = |k: &str| {
            e.get(k).and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        let (Some(id), Some(event), Some(email)) =
            (text("sg_event_id"), text("event"), text("email"))
        else {
            return Err(FeedbackError::Malformed(
                "an event lacks sg_event_id, event or email".into(),
            ));
        };
        let reason = text("reason").unwrap_or_default();
        let kind = match event.as_str() {
            "delivered" => Kind::Delivered,
            "deferred" => Kind::Deferred,
            // `type` is "bounce" for a permanent failure, "blocked" for a temporary one.
            "bounce" if text("type").as_deref() == Some("blocked") => Kind::Deferred,
            "bounce" => Kind::HardBounce,
            "spamreport" => Kind::Complaint,
            "unsubscribe" | "group_unsubscribe" => Kind::Unsubscribe,
            // SendGrid did not send because the address is on one of its own lists.
            "dropped" if reason.contains("Bounced Address") || reason.contains("Invalid") => {
                Kind::HardBounce
            }
            "dropped" if reason.contains("Spam Report") => Kind::Complaint,
            "dropped" if reason.contains("Unsubscribed") => Kind::Unsubscribe,
            _ => continue,
        };
        out.push(Event {
            key: format!("sendgrid:{id}"),
            provider: "sendgrid",
            kind,
            email: email.trim().to_ascii_lowercase(),
            campaign_id: number_or_text("campaign_id"),
            recipient_id: number_or_text("recipient_id").and_then(|r| r.parse().ok()),
            detail: Some(reason).filter(|r| !r.is_empty()),
        });
    }
    Ok(out)
}

/// Whether an `Authorization` header carries exactly these basic-auth credentials (constant time).
pub fn basic_auth_matches(header: Option<&str>, username: &str, password: &str) -> bool {
    use base64::Engine;
    let Some(given) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    crate::domain::secret::same(given.trim().as_bytes(), expected.as_bytes())
}

/// Reads a Postmark webhook (one record per post; authenticated by the endpoint, not signed).
pub fn postmark(raw: &[u8]) -> Result<Event, FeedbackError> {
    let e: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| FeedbackError::Malformed(e.to_string()))?;
    let text = |k: &str| e.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let record =
        text("RecordType").ok_or_else(|| FeedbackError::Malformed("no RecordType".into()))?;
    let bounce_type = text("Type").unwrap_or_default();
    let kind = match record.as_str() {
        "Delivery" => Kind::Delivered,
        "Bounce" if matches!(bounce_type.as_str(), "HardBounce" | "BadEmailAddress") => {
            Kind::HardBounce
        }
        "Bounce" if bounce_type == "SpamNotification" => Kind::Complaint,
        "Bounce" => Kind::Deferred,
        "SpamComplaint" => Kind::Complaint,
        "SubscriptionChange"
            if e.get("SuppressSending").and_then(|v| v.as_bool()) == Some(true) =>
        {
            match text("SuppressionReason").as_deref() {
                Some("HardBounce") => Kind::HardBounce,
                Some("SpamComplaint") => Kind::Complaint,
                _ => Kind::Unsubscribe,
            }
        }
        other => return Err(FeedbackError::Ignored(other.to_string())),
    };
    let email = text("Email")
        .or_else(|| text("Recipient"))
        .ok_or_else(|| FeedbackError::Malformed("no Email or Recipient".into()))?;
    // Bounces carry a numeric ID; other records are one per message and change.
    let id = e
        .get("ID")
        .map(|v| v.to_string())
        .or_else(|| {
            text("MessageID").map(|m| format!("{m}:{}", text("ChangedAt").unwrap_or_default()))
        })
        .ok_or_else(|| FeedbackError::Malformed("no ID or MessageID".into()))?;
    let meta = |k: &str| {
        e.get("Metadata")
            .and_then(|m| m.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    Ok(Event {
        key: format!("postmark:{record}:{id}"),
        provider: "postmark",
        kind,
        email: email.trim().to_ascii_lowercase(),
        campaign_id: meta("campaign_id"),
        recipient_id: meta("recipient_id").and_then(|r| r.parse().ok()),
        detail: text("Description")
            .or_else(|| text("Details"))
            .filter(|d| !d.is_empty()),
    })
}

/// The base64 DER form SendGrid shows its key in; for tests and local tooling.
pub fn sendgrid_public_key(key: &VerifyingKey) -> String {
    use base64::Engine;
    // SubjectPublicKeyInfo for id-ecPublicKey / prime256v1, then the uncompressed point.
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    der.extend_from_slice(key.to_encoded_point(false).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// Signs like SendGrid does; for tests and local tooling.
pub fn sendgrid_signature(key: &p256::ecdsa::SigningKey, timestamp: &str, body: &[u8]) -> String {
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    let sig: p256::ecdsa::Signature = key.sign(&signed);
    base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
}

/// Signs like Mailgun does; for tests and local tooling.
pub fn mailgun_signature(signing_key: &str, timestamp: &str, token: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(signing_key.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    hex(&mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "key-signing-0123456789";
    const NOW: i64 = 1_700_000_000_000;

    fn post(ts: i64, token: &str, event: serde_json::Value, key: &str) -> Vec<u8> {
        let ts = (ts / 1000).to_string();
        serde_json::to_vec(&serde_json::json!({
            "signature": {"timestamp": ts, "token": token, "signature": mailgun_signature(key, &ts, token)},
            "event-data": event,
        }))
        .unwrap()
    }

    fn bounce() -> serde_json::Value {
        serde_json::json!({
            "id": "G9Bn5sl1TC6nu79C8C0bwg", "event": "failed", "severity": "permanent",
            "recipient": "Gone@Example.org", "reason": "bounce",
            "delivery-status": {"code": 550, "description": "", "message": "5.1.1 The email account does not exist"},
            "user-variables": {"campaign_id": "c01", "recipient_id": "17"}
        })
    }

    // Known answers from an independent signer (Python's `hmac`, and `cryptography` for ECDSA
    // P-256 with SHA-256), so the verifiers are not checked only against our own signers: a wrong
    // byte layout would pass both.
    const KAT_TIMESTAMP: &str = "1700000000";
    const KAT_TOKEN: &str = "8c6b0a3a9e7f4c0fa1d2e3b4c5d6e7f8091a2b3c4d5e6f7081";
    const KAT_MAILGUN: &str = "247adbb9338155617305070994dc74e523619d61ca52b72868d911f12ea19a94";
    /// The public key of the P-256 private scalar 0x0707…07, as SendGrid shows one.
    const KAT_SENDGRID_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHhhTL9R1TALzBB2cdc6zO4P/2BrHzk/ogsyxyYvFiW6kbDEcTi/0DdlqNlPm5FRF0y3+SG7O11x6kMahiIHAow==";
    const KAT_SENDGRID_BODY: &str = r#"[{"email":"gone@example.org","event":"bounce","type":"bounce","sg_event_id":"sg-kat-1","reason":"550 5.1.1 unknown user"}]"#;
    const KAT_SENDGRID_SIGNATURE: &str = "MEYCIQClxNUcuIsC7urBXMNIaMjzO92rmYxsxSpRaYJhkl6MIgIhAICPyN2Pvk6wMdGs+PPQQpdEr3HAUE7vRUg+GwoQreD4";

    #[test]
    fn a_mailgun_post_signed_elsewhere_is_verified() {
        let raw = serde_json::to_vec(&serde_json::json!({
            "signature": {"timestamp": KAT_TIMESTAMP, "token": KAT_TOKEN, "signature": KAT_MAILGUN},
            "event-data": bounce(),
        }))
        .unwrap();
        let e = mailgun(&raw, KEY, 1_700_000_000_000 + 1_000).unwrap();
        assert_eq!(e.kind, Kind::HardBounce);
        assert_eq!(e.key, format!("mailgun:{KAT_TOKEN}"));
        assert_eq!(
            mailgun_signature(KEY, KAT_TIMESTAMP, KAT_TOKEN),
            KAT_MAILGUN
        );
        // Token before timestamp is another message.
        assert_ne!(
            mailgun_signature(KEY, KAT_TOKEN, KAT_TIMESTAMP),
            KAT_MAILGUN
        );
    }

    #[test]
    fn a_sendgrid_post_signed_elsewhere_is_verified() {
        let key = sendgrid_key(KAT_SENDGRID_KEY).unwrap();
        let signing = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        assert_eq!(
            sendgrid_public_key(signing.verifying_key()),
            KAT_SENDGRID_KEY
        );
        let body = KAT_SENDGRID_BODY.as_bytes();
        let events = sendgrid(
            body,
            Some(KAT_TIMESTAMP),
            Some(KAT_SENDGRID_SIGNATURE),
            &key,
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, Kind::HardBounce);
        assert_eq!(events[0].email, "gone@example.org");
        // The signature covers the timestamp header too, and the body byte for byte.
        assert!(matches!(
            sendgrid(body, Some("1700000001"), Some(KAT_SENDGRID_SIGNATURE), &key),
            Err(FeedbackError::BadSignature)
        ));
        let spaced = KAT_SENDGRID_BODY.replace(',', ", ");
        assert!(matches!(
            sendgrid(
                spaced.as_bytes(),
                Some(KAT_TIMESTAMP),
                Some(KAT_SENDGRID_SIGNATURE),
                &key
            ),
            Err(FeedbackError::BadSignature)
        ));
    }

    #[test]
    fn a_signed_hard_bounce_is_read() {
        let e = mailgun(&post(NOW, "tok-1", bounce(), KEY), KEY, NOW + 1_000).unwrap();
        assert_eq!(e.kind, Kind::HardBounce);
        assert!(e.kind.suppresses());
        assert_eq!(e.email, "gone@example.org");
        assert_eq!(e.campaign_id.as_deref(), Some("c01"));
        assert_eq!(e.recipient_id, Some(17));
        assert_eq!(e.key, "mailgun:tok-1");
        assert!(e.detail.unwrap().contains("does not exist"));
    }

    #[test]
    fn forged_tampered_and_stale_posts_are_refused() {
        assert_eq!(
            mailgun(&post(NOW, "tok-1", bounce(), "another-key"), KEY, NOW),
            Err(FeedbackError::BadSignature)
        );
        let mut tampered: serde_json::Value =
            serde_json::from_slice(&post(NOW, "tok-1", bounce(), KEY)).unwrap();
        tampered["signature"]["token"] = "tok-2".into();
        assert_eq!(
            mailgun(&serde_json::to_vec(&tampered).unwrap(), KEY, NOW),
            Err(FeedbackError::BadSignature)
        );
        assert!(matches!(
            mailgun(&post(NOW - 10 * 60_000, "tok-1", bounce(), KEY), KEY, NOW),
            Err(FeedbackError::Stale { age_s: 600 })
        ));
        assert!(matches!(
            mailgun(b"{}", KEY, NOW),
            Err(FeedbackError::Malformed(_))
        ));
    }

    #[test]
    fn event_kinds() {
        let kind = |event: &str, severity: &str| {
            let mut e = bounce();
            e["event"] = event.into();
            e["severity"] = severity.into();
            mailgun(&post(NOW, "t", e, KEY), KEY, NOW).map(|e| e.kind)
        };
        assert_eq!(kind("failed", "temporary"), Ok(Kind::Deferred));
        assert_eq!(kind("complained", ""), Ok(Kind::Complaint));
        assert_eq!(kind("unsubscribed", ""), Ok(Kind::Unsubscribe));
        assert_eq!(kind("delivered", ""), Ok(Kind::Delivered));
        assert_eq!(
            kind("opened", ""),
            Err(FeedbackError::Ignored("opened".into()))
        );
    }

    mod sendgrid_webhook {
        use super::super::*;
        use p256::ecdsa::SigningKey;

        fn keys(seed: u8) -> (SigningKey, String) {
            let signing = SigningKey::from_slice(&[seed; 32]).unwrap();
            let public = sendgrid_public_key(signing.verifying_key());
            (signing, public)
        }

        fn sign(key: &SigningKey, ts: &str, body: &[u8]) -> String {
            sendgrid_signature(key, ts, body)
        }

        fn body() -> Vec<u8> {
            serde_json::to_vec(&serde_json::json!([
                {"email": "Gone@example.org", "event": "bounce", "type": "bounce", "reason": "550 5.1.1 unknown user",
                 "sg_event_id": "ev-1", "timestamp": 1_700_000_000, "campaign_id": "c01", "recipient_id": "17"},
                {"email": "busy@example.org", "event": "bounce", "type": "blocked", "sg_event_id": "ev-2"},
                {"email": "angry@example.org", "event": "spamreport", "sg_event_id": "ev-3"},
                {"email": "bye@example.org", "event": "group_unsubscribe", "sg_event_id": "ev-4"},
                {"email": "x@example.org", "event": "dropped", "reason": "Bounced Address", "sg_event_id": "ev-5"},
                {"email": "y@example.org", "event": "open", "sg_event_id": "ev-6"}
            ]))
            .unwrap()
        }

        #[test]
        fn a_signed_batch_is_read_event_by_event() {
            let (signing, public) = keys(7);
            let key = sendgrid_key(&public).unwrap();
            let raw = body();
            let sig = sign(&signing, "1700000000", &raw);
            let events = sendgrid(&raw, Some("1700000000"), Some(&sig), &key).unwrap();
            let kinds: Vec<_> = events.iter().map(|e| (e.email.as_str(), e.kind)).collect();
            assert_eq!(
                kinds,
                [
                    ("gone@example.org", Kind::HardBounce),
                    ("busy@example.org", Kind::Deferred),
                    ("angry@example.org", Kind::Complaint),
                    ("bye@example.org", Kind::Unsubscribe),
                    ("x@example.org", Kind::HardBounce),
                ]
            );
            assert_eq!(events[0].key, "sendgrid:ev-1");
            assert_eq!(events[0].campaign_id.as_deref(), Some("c01"));
            assert_eq!(events[0].recipient_id, Some(17));
        }

        #[test]
        fn tampered_forged_and_unsigned_batches_are_refused() {
            let (signing, public) = keys(7);
            let key = sendgrid_key(&public).unwrap();
            let raw = body();
            let sig = sign(&signing, "1700000000", &raw);
            let mut tampered = raw.clone();
            let at = tampered.iter().position(|&b| b == b'G').unwrap();
            tampered[at] = b'H';
            let (other, _) = keys(9);
            for (body, ts, sig) in [
                (&tampered, Some("1700000000"), Some(sig.clone())),
                (&raw, Some("1700000001"), Some(sig.clone())),
                (
                    &raw,
                    Some("1700000000"),
                    Some(sign(&other, "1700000000", &raw)),
                ),
                (&raw, None, Some(sig.clone())),
                (&raw, Some("1700000000"), None),
                (
                    &raw,
                    Some("1700000000"),
                    Some("bm90IGEgc2lnbmF0dXJl".into()),
                ),
                (&raw, Some("1700000000"), Some("%%%".into())),
            ] {
                assert_eq!(
                    sendgrid(body, ts, sig.as_deref(), &key).map(|e| e.len()),
                    Err(FeedbackError::BadSignature)
                );
            }
        }

        #[test]
        fn the_key_is_checked_when_configured() {
            assert!(sendgrid_key("not base64!").unwrap_err().contains("base64"));
            assert!(sendgrid_key("AAAA").unwrap_err().contains("P-256"));
            let c = FeedbackConfig {
                sendgrid: SendgridFeedback {
                    public_key: Some("AAAA".into()),
                },
                ..Default::default()
            };
            assert!(c
                .check()
                .unwrap_err()
                .to_string()
                .contains("feedback.sendgrid.public_key"));
        }
    }

    mod postmark_webhook {
        use super::super::*;

        fn kind(record: serde_json::Value) -> Result<Kind, FeedbackError> {
            postmark(&serde_json::to_vec(&record).unwrap()).map(|e| e.kind)
        }

        #[test]
        fn records_are_read() {
            let bounce = serde_json::json!({
                "RecordType": "Bounce", "ID": 4323372036854775807i64, "Type": "HardBounce", "TypeCode": 1,
                "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Email": "Gone@Example.org",
                "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
                "Metadata": {"campaign_id": "c01", "recipient_id": "17"}
            });
            let e = postmark(&serde_json::to_vec(&bounce).unwrap()).unwrap();
            assert_eq!(e.kind, Kind::HardBounce);
            assert_eq!(e.email, "gone@example.org");
            assert_eq!(e.key, "postmark:Bounce:4323372036854775807");
            assert_eq!(e.campaign_id.as_deref(), Some("c01"));
            assert_eq!(e.recipient_id, Some(17));
            let soft = serde_json::json!({"RecordType": "Bounce", "ID": 1, "Type": "SoftBounce", "Email": "a@b.example"});
            assert_eq!(kind(soft), Ok(Kind::Deferred));
            let spam = serde_json::json!({"RecordType": "SpamComplaint", "ID": 2, "Type": "SpamComplaint", "Email": "a@b.example"});
            assert_eq!(kind(spam), Ok(Kind::Complaint));
            let unsub = serde_json::json!({
                "RecordType": "SubscriptionChange", "MessageID": "m1", "ChangedAt": "2026-11-22T10:00:00Z",
                "Recipient": "a@b.example", "SuppressSending": true, "SuppressionReason": "ManualSuppression"
            });
            assert_eq!(kind(unsub), Ok(Kind::Unsubscribe));
            let resub = serde_json::json!({
                "RecordType": "SubscriptionChange", "MessageID": "m1", "Recipient": "a@b.example", "SuppressSending": false
            });
            assert_eq!(
                kind(resub),
                Err(FeedbackError::Ignored("SubscriptionChange".into()))
            );
            let open = serde_json::json!({"RecordType": "Open", "MessageID": "m1", "Recipient": "a@b.example"});
            assert_eq!(kind(open), Err(FeedbackError::Ignored("Open".into())));
            assert!(matches!(
                kind(serde_json::json!({"ID": 1})),
                Err(FeedbackError::Malformed(_))
            ));
        }

        #[test]
        fn basic_auth_is_exact() {
            let ok = "Basic cG9zdG1hcms6cGFzc3dvcmQtcGFzc3dvcmQ="; // postmark:password-password
            assert!(basic_auth_matches(
                Some(ok),
                "postmark",
                "password-password"
            ));
            assert!(!basic_auth_matches(
                Some(ok),
                "postmark",
                "password-passwore"
            ));
            assert!(!basic_auth_matches(None, "postmark", "password-password"));
            assert!(!basic_auth_matches(
                Some("Bearer x"),
                "postmark",
                "password-password"
            ));
        }

        #[test]
        fn credentials_come_in_pairs() {
            let c = |u: Option<&str>, p: Option<&str>| FeedbackConfig {
                postmark: PostmarkFeedback {
                    username: u.map(Into::into),
                    password: p.map(Into::into),
                },
                ..Default::default()
            };
            assert!(c(None, None).check().is_ok());
            assert!(c(Some("postmark"), Some("0123456789abcdef"))
                .check()
                .is_ok());
            for (bad, key) in [
                (
                    c(Some("postmark"), None),
                    "CONDUCTOR__FEEDBACK__POSTMARK__PASSWORD",
                ),
                (c(None, Some("0123456789abcdef")), "username"),
                (c(Some("postmark"), Some("short")), "16"),
                (c(Some("a:b"), Some("0123456789abcdef")), "':'"),
            ] {
                let e = bad.check().unwrap_err().to_string();
                assert!(e.contains(key), "{e}");
            }
            assert!(!format!("{:?}", c(Some("u"), Some("0123456789abcdef"))).contains("0123"));
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any bytes posted as a Mailgun webhook are an event or a clear error, and nothing but a
        /// correct signature gets past verification.
        #[test]
        fn any_mailgun_post_is_judged_without_panic(raw in prop::collection::vec(any::<u8>(), 0..400)) {
            let r = mailgun(&raw, "key-signing-0123456789", 1_700_000_000_000);
            prop_assert!(r.is_err());
        }

        #[test]
        fn signed_posts_with_any_event_are_read_without_panic(
            event in "\\PC{0,12}", severity in "\\PC{0,10}", recipient in "\\PC{0,30}", token in "[a-z0-9]{1,40}",
        ) {
            let ts = "1700000000";
            let raw = serde_json::to_vec(&serde_json::json!({
                "signature": {"timestamp": ts, "token": token, "signature": mailgun_signature("k", ts, &token)},
                "event-data": {"event": event, "severity": severity, "recipient": recipient},
            })).unwrap();
            let v = mailgun_verify(&raw, "k", 1_700_000_000_000).unwrap();
            prop_assert_eq!(&v.token_key, &format!("mailgun:{token}"));
            let _ = v.event();
        }
    }
}
