//! Delivery feedback end to end: the sink's hard bounces come back through Mailgun's webhook, and
//! the next campaign to the same list skips those addresses; forged, replayed and stale posts change
//! nothing.

use std::time::Duration;

use conductor::feedback::mailgun_signature;
use serde_json::{json, Value};

use crate::sink::{send_to, Sink};
use crate::support::*;

const SIGNING_KEY: &str = "mailgun-signing-key-for-tests";

fn webhook(
    event: &str,
    severity: &str,
    email: &str,
    campaign: &str,
    token: &str,
    at_s: i64,
) -> Value {
    let ts = at_s.to_string();
    json!({
        "signature": {"timestamp": ts, "token": token, "signature": mailgun_signature(SIGNING_KEY, &ts, token)},
        "event-data": {
            "id": format!("ev-{token}"), "event": event, "severity": severity, "recipient": email,
            "delivery-status": {"code": 550, "message": "5.1.1 The email account that you tried to reach does not exist"},
            "user-variables": {"campaign_id": campaign, "recipient_id": "0"}
        }
    })
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn hard_bounces_from_the_webhook_are_skipped_by_the_next_campaign() {
    let (sink, base) = Sink::start().await;
    let app = spawn_app_with(|c| {
        send_to(c, &base);
        c.feedback.mailgun.signing_key = Some(SIGNING_KEY.into());
    })
    .await;
    let first = app.create(&inline_campaign(recipients(10))).await;
    app.wait_for(&first, Duration::from_secs(60), is_completed)
        .await;
    assert_eq!(sink.received.lock().unwrap().len(), 10);

    // The provider reports two hard bounces (one with the address in other case) and a soft one.
    let post = |body: Value| {
        let app = &app;
        async move {
            app.post_json("/v1/feedback/mailgun", &body)
                .await
                .status()
                .as_u16()
        }
    };
    let bounce = webhook(
        "failed",
        "permanent",
        "r2@example.com",
        &first,
        "tok-a",
        now_s(),
    );
    assert_eq!(post(bounce.clone()).await, 200);
    assert_eq!(
        post(bounce.clone()).await,
        406,
        "a replayed post is refused"
    );
    assert_eq!(
        post(webhook(
            "failed",
            "permanent",
            "R5@Example.com",
            &first,
            "tok-b",
            now_s()
        ))
        .await,
        200
    );
    assert_eq!(
        post(webhook(
            "failed",
            "temporary",
            "r6@example.com",
            &first,
            "tok-c",
            now_s()
        ))
        .await,
        200
    );
    // Forged, tampered and stale posts are refused and change nothing.
    let mut tampered = webhook(
        "failed",
        "permanent",
        "r7@example.com",
        &first,
        "tok-d",
        now_s(),
    );
    tampered["signature"]["token"] = "tok-e".into();
    assert_eq!(post(tampered).await, 401);
    let mut forged = webhook("complained", "", "r8@example.com", &first, "tok-f", now_s());
    forged["signature"]["signature"] = "00".repeat(32).into();
    assert_eq!(post(forged).await, 401);
    assert_eq!(
        post(webhook(
            "complained",
            "",
            "r9@example.com",
            &first,
            "tok-g",
            now_s() - 3_600
        ))
        .await,
        406
    );
    let p = expect_problem(
        app.post_json("/v1/feedback/mailgun", &json!({"nope": 1}))
            .await,
        400,
        "/problems/validation",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("signature"), "{p}");

    // The same list again: the two hard bounces are suppressed, everyone else is mailed.
    let second = app.create(&inline_campaign(recipients(10))).await;
    let c = app
        .wait_for(&second, Duration::from_secs(60), is_completed)
        .await;
    assert_eq!(c["counts"]["sent"], 8, "{c}");
    assert_eq!(c["counts"]["suppressed"], 2, "{c}");
    let mut mailed: Vec<String> = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.campaign_id == second)
        .map(|r| r.to.clone())
        .collect();
    mailed.sort();
    assert_eq!(mailed.len(), 8);
    assert!(
        !mailed
            .iter()
            .any(|to| to.contains("<r2@example.com>") || to.contains("<r5@example.com>")),
        "{mailed:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn without_a_signing_key_the_endpoint_is_closed() {
    let app = spawn_app().await;
    expect_problem(
        app.post_json(
            "/v1/feedback/mailgun",
            &webhook("complained", "", "r1@example.com", "c", "t", now_s()),
        )
        .await,
        403,
        "/problems/feedback-disabled",
    )
    .await;
    app.stop().await;
}
