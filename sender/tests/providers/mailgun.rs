//! Mailgun, with its documented request and response shapes.

use std::sync::Arc;
use std::time::Duration;

use sender::provider::Mailgun;
use sender::{Outcome, OutgoingMessage, Provider, SystemClock};
use wiremock::matchers::{basic_auth, body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::batch;

async fn send(server: &MockServer, timeout: Duration) -> Outcome {
    let mg = Mailgun::new(
        &server.uri(),
        "mg.example.com",
        "key-123".into(),
        timeout,
        Arc::new(SystemClock),
    )
    .unwrap();
    let b = batch();
    mg.send(OutgoingMessage {
        batch: &b,
        message: &b.messages[0],
    })
    .await
}

#[tokio::test]
async fn request_shape_and_auth() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mg.example.com/messages"))
        .and(basic_auth("api", "key-123"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string_contains(
            "from=%22Acme+News%22+%3Cnews%40mg.example.com%3E",
        ))
        .and(body_string_contains(
            "to=%22Zo%C3%AB%22+%3Czoe%40example.org%3E",
        ))
        .and(body_string_contains("subject=Gr%C3%BC%C3%9Fe+%26+more"))
        .and(body_string_contains("html=%3Cp%3EHi%3C%2Fp%3E"))
        .and(body_string_contains("text=Hi"))
        .and(body_string_contains("v%3Acampaign_id=cmp1"))
        .and(body_string_contains("v%3Arecipient_id=17"))
        .and(body_string_contains("h%3AReply-To=help%40example.com"))
        .and(body_string_contains(
            "h%3AList-Unsubscribe=%3Chttps%3A%2F%2Fmail.example.com%2Fu%2Ft0k%3E",
        ))
        .and(body_string_contains(
            "h%3AList-Unsubscribe-Post=List-Unsubscribe%3DOne-Click",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": "<20240101.1@mg.example.com>", "message": "Queued. Thank you."
        })))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        send(&server, Duration::from_secs(5)).await,
        Outcome::Sent {
            provider_id: Some("20240101.1@mg.example.com".into())
        }
    );
}

#[tokio::test]
async fn throttled_with_retry_after_is_retried_after_that_long() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "12")
                .set_body_json(serde_json::json!({"message": "Too many requests"})),
        )
        .mount(&server)
        .await;
    assert_eq!(
        send(&server, Duration::from_secs(5)).await,
        Outcome::Throttled {
            reason: "Mailgun 429: Too many requests".into(),
            retry_after_ms: Some(12_000)
        }
    );
}

#[tokio::test]
async fn server_errors_are_deferred() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream unavailable"))
        .mount(&server)
        .await;
    assert!(matches!(
        send(&server, Duration::from_secs(5)).await,
        Outcome::Deferred {
            retry_after_ms: None,
            ..
        }
    ));
}

#[tokio::test]
async fn bad_request_is_a_permanent_failure_with_mailguns_reason() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({"message": "'to' parameter is not a valid address. please check documentation"})))
        .mount(&server)
        .await;
    match send(&server, Duration::from_secs(5)).await {
        Outcome::Failed { reason } => assert!(
            reason.contains("'to' parameter is not a valid address"),
            "{reason}"
        ),
        other => panic!("expected failed, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_key_stops_the_account() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_string("Forbidden"))
        .mount(&server)
        .await;
    assert!(matches!(
        send(&server, Duration::from_secs(5)).await,
        Outcome::AccountStop { .. }
    ));
}

#[tokio::test]
async fn a_timeout_after_the_request_was_sent_is_unknown() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    assert!(matches!(
        send(&server, Duration::from_millis(300)).await,
        Outcome::Unknown { .. }
    ));
}

#[tokio::test]
async fn connection_refused_is_deferred() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mg = Mailgun::new(
        &format!("http://{addr}"),
        "d",
        "k".into(),
        Duration::from_secs(2),
        Arc::new(SystemClock),
    )
    .unwrap();
    let b = batch();
    assert!(matches!(
        mg.send(OutgoingMessage {
            batch: &b,
            message: &b.messages[0]
        })
        .await,
        Outcome::Deferred { .. }
    ));
}
