//! SendGrid v3, Postmark and Resend: request shapes, authentication, and every class of answer,
//! through the adapters the config builds.

use std::sync::Arc;
use std::time::Duration;

use sender::config::{ProviderConfig, ProviderKind};
use sender::{Outcome, OutgoingMessage, Provider, SystemClock};
use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::batch;

fn provider(kind: ProviderKind, server: &MockServer, timeout: Duration) -> Arc<dyn Provider> {
    let mut c = ProviderConfig {
        kind,
        timeout_ms: timeout.as_millis() as u64,
        ..Default::default()
    };
    c.sendgrid.base_url = server.uri();
    c.sendgrid.api_key = Some("SG.test-key".into());
    c.postmark.base_url = server.uri();
    c.postmark.server_token = Some("pm-token".into());
    c.resend.base_url = server.uri();
    c.resend.api_key = Some("re_test".into());
    c.validate().unwrap();
    c.build(Arc::new(SystemClock)).unwrap()
}

async fn send(p: &Arc<dyn Provider>) -> Outcome {
    let b = batch();
    p.send(OutgoingMessage {
        batch: &b,
        message: &b.messages[0],
    })
    .await
}

/// The adapter's outcome for one canned answer.
async fn answer(kind: ProviderKind, response: ResponseTemplate) -> Outcome {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(response)
        .mount(&server)
        .await;
    send(&provider(kind, &server, Duration::from_secs(5))).await
}

#[tokio::test]
async fn sendgrid_request_shape_and_auth() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .and(header("authorization", "Bearer SG.test-key"))
        .and(body_partial_json(json!({
            "personalizations": [{
                "to": [{"email": "zoe@example.org", "name": "Zoë"}],
                "custom_args": {"campaign_id": "cmp1", "recipient_id": "17"}
            }],
            "from": {"email": "news@mg.example.com", "name": "Acme News"},
            "reply_to": {"email": "help@example.com"},
            "subject": "Grüße & more",
            "content": [{"type": "text/plain", "value": "Hi"}, {"type": "text/html", "value": "<p>Hi</p>"}],
            "headers": {
                "Message-ID": "<cmp1.17@mg.example.com>",
                "List-Unsubscribe": "<https://mail.example.com/u/t0k>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"
            }
        })))
        .respond_with(ResponseTemplate::new(202).insert_header("X-Message-Id", "sg-abc"))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(ProviderKind::Sendgrid, &server, Duration::from_secs(5));
    assert_eq!(
        send(&p).await,
        Outcome::Sent {
            provider_id: Some("sg-abc".into())
        }
    );
}

#[tokio::test]
async fn sendgrid_answers() {
    let kind = ProviderKind::Sendgrid;
    let reset = chrono::Utc::now().timestamp() + 30;
    match answer(
        kind,
        ResponseTemplate::new(429)
            .insert_header("X-RateLimit-Reset", reset.to_string().as_str())
            .set_body_json(json!({"errors": [{"message": "too many requests"}]})),
    )
    .await
    {
        Outcome::Throttled {
            retry_after_ms: Some(ms),
            ..
        } => assert!((25_000..=31_000).contains(&ms), "{ms}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        answer(kind, ResponseTemplate::new(400).set_body_json(json!({"errors": [{"message": "Does not contain a valid address.", "field": "personalizations.0.to.0.email"}]}))).await,
        Outcome::Failed { reason } if reason.contains("valid address")
    ));
    assert!(matches!(
        answer(kind, ResponseTemplate::new(401).set_body_json(json!({"errors": [{"message": "The provided authorization grant is invalid, expired, or revoked"}]}))).await,
        Outcome::AccountStop { .. }
    ));
    assert!(matches!(
        answer(kind, ResponseTemplate::new(403).set_body_json(json!({"errors": [{"message": "The from address does not match a verified Sender Identity."}]}))).await,
        Outcome::AccountStop { reason } if reason.contains("Sender Identity")
    ));
    assert!(matches!(
        answer(kind, ResponseTemplate::new(500)).await,
        Outcome::Deferred { .. }
    ));
}

#[tokio::test]
async fn postmark_request_shape_and_auth() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/email"))
        .and(header("x-postmark-server-token", "pm-token"))
        .and(header("accept", "application/json"))
        .and(body_partial_json(json!({
            "From": "\"Acme News\" <news@mg.example.com>",
            "To": "\"Zoë\" <zoe@example.org>",
            "ReplyTo": "help@example.com",
            "Subject": "Grüße & more",
            "HtmlBody": "<p>Hi</p>",
            "TextBody": "Hi",
            "Headers": [
                {"Name": "Message-ID", "Value": "<cmp1.17@mg.example.com>"},
                {"Name": "List-Unsubscribe", "Value": "<https://mail.example.com/u/t0k>"},
                {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}
            ],
            "Metadata": {"campaign_id": "cmp1", "recipient_id": "17"},
            "MessageStream": "broadcast"
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "To": "zoe@example.org", "SubmittedAt": "2026-11-22T10:00:00Z",
            "MessageID": "0a129aee-e1cd-480d-b08d-4f48548ff48d", "ErrorCode": 0, "Message": "OK"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(ProviderKind::Postmark, &server, Duration::from_secs(5));
    assert_eq!(
        send(&p).await,
        Outcome::Sent {
            provider_id: Some("0a129aee-e1cd-480d-b08d-4f48548ff48d".into())
        }
    );
}

#[tokio::test]
async fn postmark_answers() {
    let kind = ProviderKind::Postmark;
    let error = |status: u16, code: i64, message: &str| {
        ResponseTemplate::new(status).set_body_json(json!({"ErrorCode": code, "Message": message}))
    };
    assert!(matches!(
        answer(kind, error(422, 406, "You tried to send to a recipient that has been marked as inactive.")).await,
        Outcome::Failed { reason } if reason.contains("inactive")
    ));
    assert!(matches!(
        answer(kind, error(422, 300, "Invalid 'To' address: 'zoe'.")).await,
        Outcome::Failed { .. }
    ));
    assert!(matches!(
        answer(kind, error(401, 10, "Bad or missing Server API token.")).await,
        Outcome::AccountStop { .. }
    ));
    assert!(matches!(
        answer(
            kind,
            error(
                422,
                400,
                "The 'From' address you supplied is not a Sender Signature on your account."
            )
        )
        .await,
        Outcome::AccountStop { .. }
    ));
    assert!(matches!(
        answer(kind, error(422, 413, "Your account has been suspended.")).await,
        Outcome::AccountStop { .. }
    ));
    assert!(matches!(
        answer(
            kind,
            ResponseTemplate::new(429).insert_header("Retry-After", "5")
        )
        .await,
        Outcome::Throttled {
            retry_after_ms: Some(5_000),
            ..
        }
    ));
    assert!(matches!(
        answer(kind, ResponseTemplate::new(503)).await,
        Outcome::Deferred { .. }
    ));
}

/// Three distinct messages of one batch.
fn three() -> renderer::RenderedBatch {
    let mut b = batch();
    let first = b.messages[0].clone();
    b.messages = (0..3)
        .map(|i| renderer::RenderedMessage {
            recipient_id: 17 + i,
            to: format!("r{i}@example.org"),
            subject: format!("Hello {i}"),
            ..first.clone()
        })
        .collect();
    b
}

async fn send_three(p: &Arc<dyn Provider>, b: &renderer::RenderedBatch) -> Vec<Outcome> {
    let msgs: Vec<OutgoingMessage<'_>> = b
        .messages
        .iter()
        .map(|m| OutgoingMessage {
            batch: b,
            message: m,
        })
        .collect();
    p.send_batch(&msgs).await
}

#[tokio::test]
async fn postmark_batches_go_to_email_batch_and_are_read_per_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/email/batch"))
        .and(header("x-postmark-server-token", "pm-token"))
        .and(body_partial_json(json!([
            {"To": "\"Zoë\" <r0@example.org>", "Subject": "Hello 0", "MessageStream": "broadcast",
             "Metadata": {"campaign_id": "cmp1", "recipient_id": "17"}},
            {"To": "\"Zoë\" <r1@example.org>", "Subject": "Hello 1",
             "Headers": [{"Name": "Message-ID", "Value": "<cmp1.18@mg.example.com>"},
                         {"Name": "List-Unsubscribe", "Value": "<https://mail.example.com/u/t0k>"},
                         {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}]},
            {"To": "\"Zoë\" <r2@example.org>"}
        ])))
        // Postmark answers 200 for the batch even when some of its messages were refused.
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"ErrorCode": 0, "Message": "OK", "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817", "To": "r0@example.org", "SubmittedAt": "2026-11-22T10:00:00Z"},
            {"ErrorCode": 406, "Message": "You tried to send to a recipient that has been marked as inactive."},
            {"ErrorCode": 0, "Message": "OK", "MessageID": "e2ecbbfc-fe12-463d-b933-9fe22915106d", "To": "r2@example.org", "SubmittedAt": "2026-11-22T10:00:00Z"}
        ])))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(ProviderKind::Postmark, &server, Duration::from_secs(5));
    assert_eq!(p.batch_limit(), 500);
    let b = three();
    let out = send_three(&p, &b).await;
    assert_eq!(
        out[0],
        Outcome::Sent {
            provider_id: Some("b7bc2f4a-e38e-4336-af7d-e6c392c2f817".into())
        }
    );
    assert!(matches!(&out[1], Outcome::Failed { reason } if reason.contains("inactive")));
    assert!(matches!(&out[2], Outcome::Sent { .. }));
}

#[tokio::test]
async fn postmark_batch_refusals_apply_to_every_message() {
    let kind = ProviderKind::Postmark;
    type Expect = fn(&Outcome) -> bool;
    let cases: Vec<(ResponseTemplate, Expect)> = vec![
        (
            ResponseTemplate::new(401).set_body_json(
                json!({"ErrorCode": 10, "Message": "Bad or missing Server API token."}),
            ),
            |o| matches!(o, Outcome::AccountStop { .. }),
        ),
        (
            ResponseTemplate::new(429).insert_header("Retry-After", "7"),
            |o| {
                matches!(
                    o,
                    Outcome::Throttled {
                        retry_after_ms: Some(7_000),
                        ..
                    }
                )
            },
        ),
        (ResponseTemplate::new(500), |o| {
            matches!(o, Outcome::Deferred { .. })
        }),
        // Accepted, but the answer is cut: any of them may have been sent.
        (
            ResponseTemplate::new(200).set_body_string("[{\"ErrorCode\": 0"),
            |o| matches!(o, Outcome::Unknown { .. }),
        ),
        // Timed out after the request was written.
        (
            ResponseTemplate::new(200).set_delay(Duration::from_secs(3)),
            |o| matches!(o, Outcome::Unknown { .. }),
        ),
    ];
    for (response, expected) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/email/batch"))
            .respond_with(response)
            .mount(&server)
            .await;
        let p = provider(kind, &server, Duration::from_secs(1));
        let out = send_three(&p, &three()).await;
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(expected), "{out:?}");
    }
}

#[tokio::test]
async fn resend_request_shape_auth_and_idempotency_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .and(header("authorization", "Bearer re_test"))
        .and(header("idempotency-key", "cmp1/17"))
        .and(body_partial_json(json!({
            "from": "\"Acme News\" <news@mg.example.com>",
            "to": ["\"Zoë\" <zoe@example.org>"],
            "reply_to": "help@example.com",
            "subject": "Grüße & more",
            "html": "<p>Hi</p>",
            "text": "Hi",
            "headers": {
                "Message-ID": "<cmp1.17@mg.example.com>",
                "List-Unsubscribe": "<https://mail.example.com/u/t0k>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"
            },
            "tags": [{"name": "campaign_id", "value": "cmp1"}, {"name": "recipient_id", "value": "17"}]
        })))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(ProviderKind::Resend, &server, Duration::from_secs(5));
    assert_eq!(
        send(&p).await,
        Outcome::Sent {
            provider_id: Some("49a3999c-0ce1-4ea6-ab68-afcd6dc2e794".into())
        }
    );
}

#[tokio::test]
async fn resend_answers_and_a_lost_answer_is_retried_under_the_same_key() {
    let kind = ProviderKind::Resend;
    let error = |status: u16, name: &str, message: &str| {
        ResponseTemplate::new(status)
            .set_body_json(json!({"statusCode": status, "name": name, "message": message}))
    };
    assert!(matches!(
        answer(kind, error(422, "validation_error", "Invalid `to` field.")).await,
        Outcome::Failed { .. }
    ));
    assert!(matches!(
        answer(kind, error(403, "validation_error", "The example.com domain is not verified.")).await,
        Outcome::AccountStop { reason } if reason.contains("not verified")
    ));
    assert!(matches!(
        answer(
            kind,
            error(
                401,
                "missing_api_key",
                "Missing API key in the authorization header."
            )
        )
        .await,
        Outcome::AccountStop { .. }
    ));
    assert!(matches!(
        answer(
            kind,
            error(429, "rate_limit_exceeded", "Too many requests.")
                .insert_header("Retry-After", "1")
        )
        .await,
        Outcome::Throttled {
            retry_after_ms: Some(1_000),
            ..
        }
    ));
    assert!(matches!(
        answer(
            kind,
            error(
                429,
                "daily_quota_exceeded",
                "You have reached your daily email sending quota."
            )
        )
        .await,
        Outcome::AccountStop { .. }
    ));

    // The answer never comes: the request may have been accepted, yet the retry is safe because
    // it carries the same key — unlike every other provider, where this is `unknown`.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("idempotency-key", "cmp1/17"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .expect(2)
        .mount(&server)
        .await;
    let p = provider(kind, &server, Duration::from_millis(300));
    for _ in 0..2 {
        assert!(matches!(send(&p).await, Outcome::Deferred { .. }));
    }
}

#[tokio::test]
async fn a_lost_answer_is_unknown_where_the_provider_has_no_idempotency() {
    for kind in [ProviderKind::Sendgrid, ProviderKind::Postmark] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
            .mount(&server)
            .await;
        let p = provider(kind, &server, Duration::from_millis(300));
        assert!(
            matches!(send(&p).await, Outcome::Unknown { .. }),
            "{kind:?}"
        );
    }
}
