//! Delivery feedback from providers' webhooks: proving a post came from the provider, and reading
//! what it says into one event per recipient. Pure: the endpoint (`api.rs`) does the I/O.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// How old a signed webhook may be: Mailgun signs with the time of sending; older posts are replays.
pub const MAX_AGE_MS: i64 = 5 * 60_000;

/// `[feedback.mailgun]`: the webhook signing key, only from
/// `CONDUCTOR__FEEDBACK__MAILGUN__SIGNING_KEY`. Without it the endpoint is closed.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailgunFeedback {
    pub signing_key: Option<String>,
}

impl std::fmt::Debug for MailgunFeedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailgunFeedback")
            .field(
                "signing_key",
                &self.signing_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `[feedback]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackConfig {
    pub mailgun: MailgunFeedback,
}

impl FeedbackConfig {
    /// An empty key would "verify" anything signed with an empty key: refuse it.
    pub fn check(&self) -> Result<(), sender::config::ConfigError> {
        match &self.mailgun.signing_key {
            Some(k) if k.trim().is_empty() => Err(sender::config::invalid(
                "feedback.mailgun.signing_key",
                "is empty: unset it to close the endpoint",
            )),
            _ => Ok(()),
        }
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

/// Verifies a Mailgun webhook (HMAC-SHA256 of `timestamp ‖ token` with the signing key, in constant
/// time; not older than [`MAX_AGE_MS`]) and reads its event. `now` is the caller's clock.
pub fn mailgun(raw: &[u8], signing_key: &str, now: i64) -> Result<Event, FeedbackError> {
    let post: MailgunPost =
        serde_json::from_slice(raw).map_err(|e| FeedbackError::Malformed(e.to_string()))?;
    let s = &post.signature;
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_key.as_bytes())
        .map_err(|_| FeedbackError::BadSignature)?;
    mac.update(s.timestamp.as_bytes());
    mac.update(s.token.as_bytes());
    let expected = hex(&mac.finalize().into_bytes());
    let given = s.signature.trim().to_ascii_lowercase();
    if !crate::secret::same(expected.as_bytes(), given.as_bytes()) {
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
        // The signature covers only timestamp and token, not the event: the token must be single-use,
        // or a captured signature could carry any event for five minutes.
        key: format!("mailgun:{}", s.token),
        provider: "mailgun",
        kind,
        email: email.trim().to_ascii_lowercase(),
        campaign_id: var("campaign_id"),
        recipient_id: var("recipient_id").and_then(|r| r.parse().ok()),
        detail,
    })
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
}
