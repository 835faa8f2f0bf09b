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

/// `X-RateLimit-Reset` as epoch seconds (SendGrid), in milliseconds from `now`.
pub fn rate_limit_reset(value: Option<&str>, now: Millis) -> Option<i64> {
    let at = value?.trim().parse::<i64>().ok()?;
    Some((at * 1000 - now).clamp(0, 86_400_000))
}

/// The first 200 characters of a body that is not the JSON we expected.
fn excerpt(body: &str) -> String {
    body.chars().take(200).collect()
}

/// SendGrid v3 `POST /v3/mail/send`: 202 with the id in `X-Message-Id`; errors as
/// `{"errors":[{"message","field"}]}`.
pub fn sendgrid(
    status: u16,
    retry_after_ms: Option<i64>,
    message_id: Option<String>,
    body: &str,
) -> Outcome {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|j| {
            let errors = j.get("errors")?.as_array()?;
            Some(
                errors
                    .iter()
                    .filter_map(|e| e.get("message").and_then(|m| m.as_str()))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| excerpt(body));
    ladder(
        status,
        format!("SendGrid {status}: {message}"),
        retry_after_ms,
        || message_id,
    )
}

/// Postmark `POST /email`: `{"ErrorCode", "Message", "MessageID"}`; the ErrorCode decides, whatever
/// the status says.
pub fn postmark(status: u16, retry_after_ms: Option<i64>, body: &str) -> Outcome {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let code = json
        .as_ref()
        .and_then(|j| j.get("ErrorCode"))
        .and_then(|c| c.as_i64());
    let message = json
        .as_ref()
        .and_then(|j| j.get("Message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| excerpt(body));
    let reason = format!("Postmark {status}/{}: {message}", code.unwrap_or(-1));
    match code {
        // 10 bad token; 400/401 sender signature missing or unconfirmed; 405 out of credits;
        // 412 account pending approval; 413 account suspended or inactive.
        Some(10 | 400 | 401 | 405 | 412 | 413) => Outcome::AccountStop { reason },
        // 300 invalid request, 406 inactive (suppressed) recipient, and every other refusal, which
        // a batch answers with a 200.
        Some(c) if c != 0 && (200..=299).contains(&status) => Outcome::Failed { reason },
        _ => ladder(status, reason, retry_after_ms, || {
            json.as_ref()
                .and_then(|j| j.get("MessageID"))
                .and_then(|i| i.as_str())
                .map(str::to_string)
        }),
    }
}

/// Postmark `POST /email/batch` for `n` messages: 200 with one `{"ErrorCode", "Message", "MessageID"}`
/// per message, in order, **even when some failed**; a refusal of the whole request (bad token,
/// 429, 5xx) is one object and applies to every message.
pub fn postmark_batch(
    status: u16,
    retry_after_ms: Option<i64>,
    body: &str,
    n: usize,
) -> Vec<Outcome> {
    let elements = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|j| j.as_array().cloned());
    match elements {
        Some(elements) if (200..=299).contains(&status) => {
            let mut out: Vec<Outcome> = elements
                .iter()
                .take(n)
                .map(|e| match e.get("ErrorCode").and_then(|c| c.as_i64()) {
                    Some(_) => postmark(status, None, &e.to_string()),
                    None => Outcome::Unknown {
                        reason: format!(
                            "Postmark batch element without ErrorCode: {}",
                            excerpt(&e.to_string())
                        ),
                    },
                })
                .collect();
            while out.len() < n {
                out.push(Outcome::Unknown {
                    reason: format!(
                        "Postmark answered {} results for {n} messages; this one may have been sent",
                        elements.len()
                    ),
                });
            }
            out
        }
        // Accepted, but we cannot tell which message became what: each may have been sent.
        None if (200..=299).contains(&status) => vec![
            Outcome::Unknown {
                reason: format!(
                    "Postmark batch {status} without a result list: {}",
                    excerpt(body)
                ),
            };
            n
        ],
        _ => vec![postmark(status, retry_after_ms, body); n],
    }
}

/// Resend `POST /emails`: `{"id"}`; errors `{"statusCode","name","message"}`. The request carries an
/// `Idempotency-Key`, so a request that may have reached Resend is safely retried, not held.
pub fn resend(status: u16, retry_after_ms: Option<i64>, body: &str) -> Outcome {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |k: &str| {
        json.as_ref()
            .and_then(|j| j.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let name = field("name").unwrap_or_default();
    let reason = format!(
        "Resend {status} {name}: {}",
        field("message").unwrap_or_else(|| excerpt(body))
    );
    match status {
        // The same key is still in flight at Resend: try again shortly.
        409 if name == "concurrent_idempotent_requests" => Outcome::Deferred {
            reason,
            retry_after_ms: retry_after_ms.or(Some(1_000)),
        },
        429 if name == "daily_quota_exceeded" => Outcome::AccountStop { reason },
        _ => ladder(status, reason, retry_after_ms, || field("id")),
    }
}

/// Mailgun `POST /v3/{domain}/messages`.
pub fn mailgun(status: u16, retry_after_ms: Option<i64>, body: &str) -> Outcome {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| excerpt(body));
    ladder(
        status,
        format!("Mailgun {status}: {message}"),
        retry_after_ms,
        || {
            json.as_ref()
                .and_then(|j| j.get("id"))
                .and_then(|i| i.as_str())
                .map(|id| id.trim_matches(|c| c == '<' || c == '>').to_string())
        },
    )
}

/// The status ladder every HTTP provider shares; each reads its own body into `reason` and `id`,
/// and names its exceptions before it comes here.
fn ladder(
    status: u16,
    reason: String,
    retry_after_ms: Option<i64>,
    id: impl FnOnce() -> Option<String>,
) -> Outcome {
    match status {
        200..=299 => Outcome::Sent { provider_id: id() },
        // A bad or missing key; an unverified sender or domain; a suspended or restricted account.
        401 | 403 => Outcome::AccountStop { reason },
        429 => Outcome::Throttled {
            reason,
            retry_after_ms,
        },
        500..=599 => Outcome::Deferred {
            reason,
            retry_after_ms,
        },
        _ => Outcome::Failed { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postmark_batches_are_read_element_by_element() {
        let body = r#"[
            {"ErrorCode": 0, "Message": "OK", "MessageID": "m-1", "To": "a@x.org"},
            {"ErrorCode": 406, "Message": "You tried to send to a recipient that has been marked as inactive."},
            {"ErrorCode": 300, "Message": "Invalid 'To' address."}
        ]"#;
        let out = postmark_batch(200, None, body, 4);
        assert_eq!(
            out[0],
            Outcome::Sent {
                provider_id: Some("m-1".into())
            }
        );
        assert!(matches!(&out[1], Outcome::Failed { reason } if reason.contains("inactive")));
        assert!(matches!(&out[2], Outcome::Failed { .. }));
        // Fewer results than messages: the missing one may have been sent.
        assert!(
            matches!(&out[3], Outcome::Unknown { reason } if reason.contains("3 results for 4"))
        );
        // The whole request refused: every message shares the answer.
        let all = postmark_batch(
            401,
            None,
            r#"{"ErrorCode": 10, "Message": "Bad or missing Server API token."}"#,
            2,
        );
        assert!(all.iter().all(|o| matches!(o, Outcome::AccountStop { .. })));
        let all = postmark_batch(429, Some(3_000), "", 2);
        assert!(all.iter().all(|o| matches!(
            o,
            Outcome::Throttled {
                retry_after_ms: Some(3_000),
                ..
            }
        )));
        let all = postmark_batch(503, None, "busy", 2);
        assert!(all.iter().all(|o| matches!(o, Outcome::Deferred { .. })));
        // A 200 we cannot read could have sent all of them.
        let all = postmark_batch(200, None, "<html>", 2);
        assert!(all.iter().all(|o| matches!(o, Outcome::Unknown { .. })));
    }

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
            Outcome::Throttled {
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
    fn sendgrid_classes() {
        assert_eq!(
            sendgrid(202, None, Some("abc123".into()), ""),
            Outcome::Sent {
                provider_id: Some("abc123".into())
            }
        );
        assert!(matches!(
            sendgrid(400, None, None, r#"{"errors":[{"message":"Does not contain a valid address.","field":"personalizations.0.to.0.email"}]}"#),
            Outcome::Failed { reason } if reason.contains("Does not contain a valid address")
        ));
        assert!(matches!(
            sendgrid(403, None, None, r#"{"errors":[{"message":"The from address does not match a verified Sender Identity."}]}"#),
            Outcome::AccountStop { reason } if reason.contains("verified Sender Identity")
        ));
        assert_eq!(
            sendgrid(
                429,
                Some(4_000),
                None,
                r#"{"errors":[{"message":"too many requests"}]}"#
            ),
            Outcome::Throttled {
                reason: "SendGrid 429: too many requests".into(),
                retry_after_ms: Some(4_000)
            }
        );
        assert!(matches!(
            sendgrid(502, None, None, "<html>"),
            Outcome::Deferred { .. }
        ));
    }

    #[test]
    fn postmark_classes() {
        assert_eq!(
            postmark(
                200,
                None,
                r#"{"To":"a@example.com","MessageID":"b7bc2f4a-e38e","ErrorCode":0,"Message":"OK"}"#
            ),
            Outcome::Sent {
                provider_id: Some("b7bc2f4a-e38e".into())
            }
        );
        assert!(matches!(
            postmark(422, None, r#"{"ErrorCode":406,"Message":"You tried to send to a recipient that has been marked as inactive."}"#),
            Outcome::Failed { reason } if reason.contains("/406:")
        ));
        assert!(matches!(
            postmark(
                422,
                None,
                r#"{"ErrorCode":300,"Message":"Invalid 'To' address"}"#
            ),
            Outcome::Failed { .. }
        ));
        for code in [10, 400, 401, 405, 412, 413] {
            assert!(
                matches!(
                    postmark(
                        422,
                        None,
                        &format!(r#"{{"ErrorCode":{code},"Message":"x"}}"#)
                    ),
                    Outcome::AccountStop { .. }
                ),
                "{code}"
            );
        }
        assert!(matches!(
            postmark(
                401,
                None,
                r#"{"ErrorCode":10,"Message":"Bad or missing Server API token"}"#
            ),
            Outcome::AccountStop { .. }
        ));
        assert!(matches!(
            postmark(429, Some(2_000), ""),
            Outcome::Throttled {
                retry_after_ms: Some(2_000),
                ..
            }
        ));
        assert!(matches!(
            postmark(503, None, "down"),
            Outcome::Deferred { .. }
        ));
    }

    #[test]
    fn resend_classes() {
        assert_eq!(
            resend(
                200,
                None,
                r#"{"id":"49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}"#
            ),
            Outcome::Sent {
                provider_id: Some("49a3999c-0ce1-4ea6-ab68-afcd6dc2e794".into())
            }
        );
        assert!(matches!(
            resend(
                422,
                None,
                r#"{"statusCode":422,"name":"validation_error","message":"Invalid `to` field."}"#
            ),
            Outcome::Failed { .. }
        ));
        assert!(matches!(
            resend(403, None, r#"{"statusCode":403,"name":"validation_error","message":"The example.com domain is not verified."}"#),
            Outcome::AccountStop { reason } if reason.contains("not verified")
        ));
        assert!(matches!(
            resend(
                429,
                Some(1_000),
                r#"{"statusCode":429,"name":"rate_limit_exceeded","message":"Too many requests."}"#
            ),
            Outcome::Throttled {
                retry_after_ms: Some(1_000),
                ..
            }
        ));
        assert!(matches!(
            resend(
                429,
                None,
                r#"{"statusCode":429,"name":"daily_quota_exceeded","message":"quota"}"#
            ),
            Outcome::AccountStop { .. }
        ));
        assert!(matches!(
            resend(
                409,
                None,
                r#"{"statusCode":409,"name":"concurrent_idempotent_requests","message":"x"}"#
            ),
            Outcome::Deferred {
                retry_after_ms: Some(1_000),
                ..
            }
        ));
        assert!(matches!(
            resend(
                409,
                None,
                r#"{"statusCode":409,"name":"invalid_idempotent_request","message":"x"}"#
            ),
            Outcome::Failed { .. }
        ));
    }

    #[test]
    fn rate_limit_reset_is_epoch_seconds() {
        assert_eq!(
            rate_limit_reset(Some("1700000010"), 1_700_000_000_000),
            Some(10_000)
        );
        assert_eq!(
            rate_limit_reset(Some("1600000000"), 1_700_000_000_000),
            Some(0)
        );
        assert_eq!(rate_limit_reset(Some("soon"), 0), None);
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
