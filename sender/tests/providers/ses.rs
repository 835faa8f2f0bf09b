//! Amazon SES v2 through aws-sdk-sesv2 against wiremock: the REST request the SDK makes, SigV4, and
//! every class of answer — with the SDK's retries off, one request per send.

use std::sync::Arc;
use std::time::Duration;

use sender::config::{ProviderConfig, ProviderKind};
use sender::{Outcome, OutgoingMessage, Provider, SystemClock};
use serde_json::json;
use wiremock::matchers::{body_partial_json, header_regex, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::batch;

fn ses(endpoint: &str, timeout: Duration) -> Arc<dyn Provider> {
    // The section's own keys, as an SES-compatible service's would be: the process environment is
    // neither read nor written.
    let mut c = ProviderConfig {
        kind: ProviderKind::Ses,
        timeout_ms: timeout.as_millis() as u64,
        ..Default::default()
    };
    c.ses.region = Some("eu-west-1".into());
    c.ses.endpoint = Some(endpoint.into());
    c.ses.configuration_set = Some("marketing".into());
    c.ses.access_key_id = Some("AKIDTESTING".into());
    c.ses.secret_access_key = Some("testing-secret".into());
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

fn error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("x-amzn-ErrorType", code)
        .set_body_json(json!({ "message": message }))
}

#[tokio::test]
async fn request_shape_signature_and_message_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/email/outbound-emails"))
        .and(header_regex(
            "authorization",
            r"^AWS4-HMAC-SHA256 Credential=AKIDTESTING/\d{8}/eu-west-1/ses/aws4_request",
        ))
        .and(body_partial_json(json!({
            "FromEmailAddress": "\"Acme News\" <news@mg.example.com>",
            "Destination": {"ToAddresses": ["\"Zoë\" <zoe@example.org>"]},
            "ReplyToAddresses": ["help@example.com"],
            "ConfigurationSetName": "marketing",
            "Content": {"Simple": {
                "Subject": {"Data": "Grüße & more", "Charset": "UTF-8"},
                "Body": {"Html": {"Data": "<p>Hi</p>", "Charset": "UTF-8"}, "Text": {"Data": "Hi", "Charset": "UTF-8"}},
                "Headers": [
                    {"Name": "List-Unsubscribe", "Value": "<https://mail.example.com/u/t0k>"},
                    {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}
                ]
            }},
            "EmailTags": [{"Name": "campaign_id", "Value": "cmp1"}, {"Name": "recipient_id", "Value": "17"}]
        })))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"MessageId": "010201-ses-message-id"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let p = ses(&server.uri(), Duration::from_secs(5));
    assert_eq!(p.name(), "ses");
    assert_eq!(
        send(&p).await,
        Outcome::Sent {
            provider_id: Some("010201-ses-message-id".into())
        }
    );
}

#[tokio::test]
async fn every_class_of_answer_and_no_sdk_retries() {
    type Expect = fn(&Outcome) -> bool;
    let cases: Vec<(ResponseTemplate, Expect)> = vec![
        (
            error(
                429,
                "TooManyRequestsException",
                "Maximum sending rate exceeded.",
            ),
            |o| matches!(o, Outcome::Throttled { .. }),
        ),
        (
            error(400, "MessageRejected", "Email address is not verified."),
            |o| matches!(o, Outcome::Failed { reason } if reason.contains("not verified")),
        ),
        (
            error(400, "AccountSuspendedException", "Account suspended."),
            |o| matches!(o, Outcome::AccountStop { .. }),
        ),
        (
            error(400, "MailFromDomainNotVerifiedException", "not verified"),
            |o| matches!(o, Outcome::AccountStop { .. }),
        ),
        (
            error(500, "InternalFailure", "We encountered an internal error."),
            |o| matches!(o, Outcome::Deferred { .. }),
        ),
        (
            ResponseTemplate::new(503).set_body_string("<html>unavailable</html>"),
            |o| matches!(o, Outcome::Deferred { .. }),
        ),
    ];
    for (answer, expected) in cases {
        let server = MockServer::start().await;
        // Exactly one request: the SDK would retry throttling and 5xx three times by default.
        Mock::given(method("POST"))
            .respond_with(answer)
            .expect(1)
            .mount(&server)
            .await;
        let outcome = send(&ses(&server.uri(), Duration::from_secs(5))).await;
        assert!(expected(&outcome), "{outcome:?}");
        server.verify().await;
    }
}

#[tokio::test]
async fn no_answer_is_unknown_and_no_connection_is_deferred() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .expect(1)
        .mount(&server)
        .await;
    let outcome = send(&ses(&server.uri(), Duration::from_millis(300))).await;
    assert!(matches!(outcome, Outcome::Unknown { .. }), "{outcome:?}");

    // Nothing listens there: the request never left.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let outcome = send(&ses(&url, Duration::from_secs(2))).await;
    assert!(matches!(outcome, Outcome::Deferred { .. }), "{outcome:?}");
}
