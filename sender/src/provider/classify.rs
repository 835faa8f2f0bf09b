//! Provider answers → outcomes. Pure functions of status, headers and body.

use crate::clock::Millis;
use crate::lease::Outcome;

/// How a transport failure is read: only a failure to connect proves the request never left.
pub fn transport_error(connect_failed: bool, detail: &str) -> Outcome {
    if connect_failed {
        Outcome::Deferred {
            reason: format!("connect failed: {detail}"),
            retry_after_ms: None,
        }
    } else {
        Outcome::Unknown {
            reason: format!("no answer after the request was sent: {detail}"),
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date, in milliseconds from `now`.
pub fn retry_after(value: Option<&str>, now: Millis) -> Option<i64> {
    let v = value?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some((secs.min(86_400) * 1000) as i64);
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some((at.timestamp_millis() - now).clamp(0, 86_400_000))
}

/// Mailgun `POST /v3/{domain}/messages`.
pub fn mailgun(status: u16, retry_after_ms: Option<i64>, body: &str) -> Outcome {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.chars().take(200).collect());
    match status {
        200..=299 => Outcome::Sent {
            provider_id: json
                .as_ref()
                .and_then(|j| j.get("id"))
                .and_then(|i| i.as_str())
                .map(|id| id.trim_matches(|c| c == '<' || c == '>').to_string()),
        },
        401 | 403 => Outcome::AccountStop {
            reason: format!("Mailgun {status}: {message}"),
        },
        429 | 500..=599 => Outcome::Deferred {
            reason: format!("Mailgun {status}: {message}"),
            retry_after_ms,
        },
        _ => Outcome::Failed {
            reason: format!("Mailgun {status}: {message}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailgun_classes() {
        assert_eq!(
            mailgun(
                200,
                None,
                r#"{"id":"<2024.abc@mg.example.com>","message":"Queued. Thank you."}"#
            ),
            Outcome::Sent {
                provider_id: Some("2024.abc@mg.example.com".into())
            }
        );
        assert!(matches!(
            mailgun(400, None, r#"{"message":"'to' parameter is not a valid address. please check documentation"}"#),
            Outcome::Failed { reason } if reason.contains("not a valid address")
        ));
        assert!(matches!(
            mailgun(401, None, "Forbidden"),
            Outcome::AccountStop { .. }
        ));
        assert_eq!(
            mailgun(429, Some(3_000), r#"{"message":"Too many requests"}"#),
            Outcome::Deferred {
                reason: "Mailgun 429: Too many requests".into(),
                retry_after_ms: Some(3_000)
            }
        );
        assert!(matches!(
            mailgun(503, None, "<html>"),
            Outcome::Deferred { .. }
        ));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after(Some("7"), 0), Some(7_000));
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            retry_after(Some("Wed, 21 Oct 2015 07:28:30 GMT"), now),
            Some(30_000)
        );
        assert_eq!(retry_after(Some("soon"), now), None);
        assert_eq!(retry_after(None, now), None);
    }

    #[test]
    fn only_connect_failures_are_safe_to_retry() {
        assert!(matches!(
            transport_error(true, "refused"),
            Outcome::Deferred { .. }
        ));
        assert!(matches!(
            transport_error(false, "timed out"),
            Outcome::Unknown { .. }
        ));
    }
}
