//! Amazon SES feedback, which arrives through SNS: the SNS envelope is verified by
//! [`renderer::sns::Verifier`] (the renderer's own SNS endpoint uses the same one); this reads the
//! SES notification inside it. Pure.
//!
//! Both of SES's forms are read: identity notifications (`notificationType`) and configuration-set
//! event publishing (`eventType`, which also carries the message's tags, so events are tied to the
//! campaign and recipient the sender tagged them with).

use renderer::sns::SnsMessage;
use serde_json::Value;

use super::{Event, FeedbackError, Kind};

/// How old an SNS delivery may be. SNS signs with the time it first published, and retries with the
/// same signature under its delivery policy (minutes by default, hours at most); anything older is a
/// replay of a captured message, not a retry.
pub const MAX_AGE_MS: i64 = 60 * 60_000;

/// Reads the SES events of a verified SNS notification. `now` is the caller's clock.
pub fn events(sns: &SnsMessage, now: i64) -> Result<Vec<Event>, FeedbackError> {
    let published = chrono::DateTime::parse_from_rfc3339(&sns.timestamp)
        .map_err(|e| FeedbackError::Malformed(format!("Timestamp {:?}: {e}", sns.timestamp)))?
        .timestamp_millis();
    if now - published > MAX_AGE_MS {
        return Err(FeedbackError::Stale {
            age_s: (now - published) / 1000,
        });
    }
    let n: Value = serde_json::from_str(&sns.message)
        .map_err(|e| FeedbackError::Malformed(format!("Message is not SES JSON: {e}")))?;
    let kind_of = n
        .get("eventType")
        .or_else(|| n.get("notificationType"))
        .and_then(Value::as_str)
        .ok_or_else(|| FeedbackError::Malformed("no eventType or notificationType".into()))?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    // (kind, detail) per address.
    let mut found: Vec<(Kind, String, Option<String>)> = Vec::new();
    match kind_of {
        "Bounce" => {
            let b = n
                .get("bounce")
                .ok_or_else(|| FeedbackError::Malformed("Bounce without bounce".into()))?;
            // Transient and Undetermined bounces are SES retrying or giving up on a mailbox for now.
            let kind = match text(b, "bounceType").as_deref() {
                Some("Permanent") => Kind::HardBounce,
                _ => Kind::Deferred,
            };
            for r in list(b, "bouncedRecipients")? {
                let email = text(r, "emailAddress").ok_or_else(|| {
                    FeedbackError::Malformed("a bounced recipient has no emailAddress".into())
                })?;
                let detail = text(r, "diagnosticCode").or_else(|| text(b, "bounceSubType"));
                found.push((kind, email, detail));
            }
        }
        "Complaint" => {
            let c = n
                .get("complaint")
                .ok_or_else(|| FeedbackError::Malformed("Complaint without complaint".into()))?;
            // A mailbox provider reporting that the recipient marked it "not spam" is no complaint.
            if text(c, "complaintFeedbackType").as_deref() == Some("not-spam") {
                return Err(FeedbackError::Ignored("Complaint (not-spam)".into()));
            }
            for r in list(c, "complainedRecipients")? {
                let email = text(r, "emailAddress").ok_or_else(|| {
                    FeedbackError::Malformed("a complained recipient has no emailAddress".into())
                })?;
                found.push((Kind::Complaint, email, text(c, "complaintFeedbackType")));
            }
        }
        "Delivery" => {
            let d = n
                .get("delivery")
                .ok_or_else(|| FeedbackError::Malformed("Delivery without delivery".into()))?;
            for r in list(d, "recipients")? {
                let email = r.as_str().ok_or_else(|| {
                    FeedbackError::Malformed("delivery.recipients holds a non-string".into())
                })?;
                found.push((Kind::Delivered, email.to_string(), text(d, "smtpResponse")));
            }
        }
        other => return Err(FeedbackError::Ignored(other.to_string())),
    }
    let mail = n.get("mail");
    // Event publishing gives tags as name → [values].
    let tag = |k: &str| {
        mail.and_then(|m| m.get("tags"))
            .and_then(|t| t.get(k))
            .and_then(|v| v.get(0))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let campaign_id = tag("campaign_id");
    let recipient_id = tag("recipient_id").and_then(|r| r.parse().ok());
    Ok(found
        .into_iter()
        .map(|(kind, email, detail)| {
            let email = email.trim().to_ascii_lowercase();
            Event {
                // SNS retries reuse the MessageId; one notification may name several recipients.
                key: format!("ses:{}:{email}", sns.message_id),
                provider: "ses",
                kind,
                email,
                campaign_id: campaign_id.clone(),
                recipient_id,
                detail: detail.filter(|d| !d.is_empty()),
            }
        })
        .collect())
}

fn list<'a>(v: &'a Value, k: &str) -> Result<&'a Vec<Value>, FeedbackError> {
    v.get(k)
        .and_then(Value::as_array)
        .ok_or_else(|| FeedbackError::Malformed(format!("no {k} list")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const AT: &str = "2026-11-22T10:00:00.000Z";

    fn at_ms() -> i64 {
        chrono::DateTime::parse_from_rfc3339(AT)
            .unwrap()
            .timestamp_millis()
    }

    fn sns(message: Value) -> SnsMessage {
        SnsMessage {
            kind: "Notification".into(),
            message_id: "m-1".into(),
            topic_arn: "arn:aws:sns:us-east-1:123456789012:ses-feedback".into(),
            subject: None,
            message: message.to_string(),
            timestamp: AT.into(),
            signature_version: "2".into(),
            signature: String::new(),
            signing_cert_url: String::new(),
            subscribe_url: None,
            token: None,
        }
    }

    #[test]
    fn a_permanent_bounce_names_each_recipient_and_the_tags() {
        let msg = sns(json!({
            "eventType": "Bounce",
            "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
                "bouncedRecipients": [
                    {"emailAddress": "Gone@Example.org", "diagnosticCode": "smtp; 550 5.1.1 user unknown"},
                    {"emailAddress": "also@example.org"}]},
            "mail": {"messageId": "0100", "tags": {"campaign_id": ["c1"], "recipient_id": ["7"]}}
        }));
        let events = events(&msg, at_ms() + 1_000).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind, Kind::HardBounce);
        assert_eq!(events[0].email, "gone@example.org");
        assert_eq!(events[0].key, "ses:m-1:gone@example.org");
        assert_eq!(events[0].campaign_id.as_deref(), Some("c1"));
        assert_eq!(events[0].recipient_id, Some(7));
        assert_eq!(
            events[0].detail.as_deref(),
            Some("smtp; 550 5.1.1 user unknown")
        );
        assert_eq!(events[1].detail.as_deref(), Some("General"));
    }

    #[test]
    fn notification_types_are_read_like_event_types() {
        let kind = |m: Value| events(&sns(m), at_ms()).map(|e| e[0].kind);
        assert_eq!(
            kind(
                json!({"notificationType": "Bounce", "bounce": {"bounceType": "Transient",
                "bouncedRecipients": [{"emailAddress": "a@x.org"}]}, "mail": {}})
            ),
            Ok(Kind::Deferred)
        );
        assert_eq!(
            kind(
                json!({"notificationType": "Complaint", "complaint": {"complaintFeedbackType": "abuse",
                "complainedRecipients": [{"emailAddress": "a@x.org"}]}, "mail": {}})
            ),
            Ok(Kind::Complaint)
        );
        assert_eq!(
            kind(
                json!({"notificationType": "Delivery", "delivery": {"recipients": ["a@x.org"]}, "mail": {}})
            ),
            Ok(Kind::Delivered)
        );
        assert!(matches!(
            kind(json!({"eventType": "Open", "open": {}, "mail": {}})),
            Err(FeedbackError::Ignored(_))
        ));
        assert!(matches!(
            kind(
                json!({"notificationType": "Complaint", "complaint": {"complaintFeedbackType": "not-spam",
                "complainedRecipients": [{"emailAddress": "a@x.org"}]}})
            ),
            Err(FeedbackError::Ignored(_))
        ));
    }

    #[test]
    fn garbage_and_old_deliveries_are_refused_with_the_reason() {
        let bounce = json!({"notificationType": "Bounce", "bounce": {"bounceType": "Permanent",
            "bouncedRecipients": [{"emailAddress": "a@x.org"}]}});
        assert_eq!(
            events(&sns(bounce.clone()), at_ms() + MAX_AGE_MS + 1_000),
            Err(FeedbackError::Stale { age_s: 3601 })
        );
        let mut not_json = sns(bounce);
        not_json.message = "hello".into();
        assert!(
            matches!(events(&not_json, at_ms()), Err(FeedbackError::Malformed(m)) if m.contains("not SES JSON"))
        );
        for (m, says) in [
            (json!({"mail": {}}), "no eventType"),
            (json!({"eventType": "Bounce"}), "Bounce without bounce"),
            (
                json!({"eventType": "Bounce", "bounce": {"bounceType": "Permanent"}}),
                "no bouncedRecipients",
            ),
            (
                json!({"eventType": "Bounce", "bounce": {"bouncedRecipients": [{}]}}),
                "no emailAddress",
            ),
            (
                json!({"eventType": "Delivery", "delivery": {"recipients": [1]}}),
                "non-string",
            ),
        ] {
            let e = events(&sns(m), at_ms()).unwrap_err();
            assert!(e.to_string().contains(says), "{e} should say {says}");
        }
    }
}
