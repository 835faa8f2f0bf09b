//! Delivery feedback end to end: the sink's hard bounces come back through Mailgun's webhook, and
//! the next campaign to the same list skips those addresses; forged, replayed and stale posts change
//! nothing.

use std::time::Duration;

use conductor::domain::feedback::mailgun_signature;
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

/// The token of a `List-Unsubscribe` value `<https://host/u/{token}>, <mailto:…>`.
pub fn token_of(list_unsubscribe: &str) -> String {
    let url = list_unsubscribe
        .split(", ")
        .next()
        .unwrap()
        .trim_matches(|c| c == '<' || c == '>');
    url.strip_prefix("https://mail.example.com/u/")
        .unwrap_or_else(|| panic!("unexpected link {url}"))
        .to_string()
}

#[tokio::test]
async fn one_click_unsubscribe_takes_effect_before_the_next_send() {
    let (sink, base) = Sink::start().await;
    let app = spawn_app_with(|c| {
        send_to(c, &base);
        c.unsubscribe.base_url = Some("https://mail.example.com".into());
        c.unsubscribe.mailto = Some("unsubscribe@example.com".into());
        c.unsubscribe.secret = Some("unsubscribe-secret-for-tests-0123456789".into());
    })
    .await;
    let mut campaign = inline_campaign(recipients(5));
    campaign["html"] = "<p>Hi {{name}}</p><a href=\"{{unsubscribe_url}}\">Unsubscribe</a>".into();
    let first = app.create(&campaign).await;
    app.wait_for(&first, Duration::from_secs(60), is_completed)
        .await;
    let received = sink.received.lock().unwrap().clone();
    assert_eq!(received.len(), 5);
    let mut tokens = std::collections::BTreeMap::new();
    for r in &received {
        // RFC 8058: both headers, the HTTPS URI first; the template sees the same link.
        assert!(
            r.list_unsubscribe
                .ends_with(", <mailto:unsubscribe@example.com>"),
            "{}",
            r.list_unsubscribe
        );
        assert_eq!(r.list_unsubscribe_post, "List-Unsubscribe=One-Click");
        let token = token_of(&r.list_unsubscribe);
        assert!(
            r.html
                .contains(&format!("https://mail.example.com/u/{token}")),
            "{}",
            r.html
        );
        assert!(
            token.starts_with(&format!("{first}.{}.", r.recipient_id)),
            "{token}"
        );
        tokens.insert(r.to.clone(), token);
    }
    let token = |email: &str| {
        tokens
            .iter()
            .find(|(to, _)| to.contains(&format!("<{email}>")))
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Opening the link (a person, or a scanner) only shows the button.
    let r = client
        .get(app.url(&format!("/u/{}", token("r1@example.com"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("method=\"post\""), "{html}");

    // The mailbox provider's one-click POST: no cookie, no redirect, done at once; again is fine.
    for _ in 0..2 {
        let r = client
            .post(app.url(&format!("/u/{}", token("r3@example.com"))))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("set-cookie").is_none());
        assert!(r.headers().get("location").is_none());
    }
    // Altered or foreign tokens unsubscribe nobody.
    let good = token("r4@example.com");
    for bad in [
        good.replacen(
            &format!(".{}.", good.split('.').nth(1).unwrap()),
            ".999.",
            1,
        ),
        format!("{}x", &good[..good.len() - 1]),
        "nonsense".to_string(),
    ] {
        let r = client
            .post(app.url(&format!("/u/{bad}")))
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }

    // The next campaign to the same list skips exactly the one who unsubscribed.
    let second = app.create(&campaign).await;
    let c = app
        .wait_for(&second, Duration::from_secs(60), is_completed)
        .await;
    assert_eq!(c["counts"]["sent"], 4, "{c}");
    assert_eq!(c["counts"]["suppressed"], 1, "{c}");
    let mailed: Vec<String> = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.campaign_id == second)
        .map(|r| r.to.clone())
        .collect();
    assert!(
        mailed.iter().any(|to| to.contains("<r1@example.com>")),
        "{mailed:?}"
    );
    assert!(
        !mailed.iter().any(|to| to.contains("<r3@example.com>")),
        "{mailed:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn without_signed_links_messages_keep_the_provider_tag() {
    let (sink, base) = Sink::start().await;
    let app = spawn_app_with(|c| send_to(c, &base)).await;
    let mut campaign = inline_campaign(recipients(1));
    campaign["html"] = "<a href=\"{{unsubscribe_url}}\">Unsubscribe</a>".into();
    let id = app.create(&campaign).await;
    app.wait_for(&id, Duration::from_secs(60), is_completed)
        .await;
    let r = sink.received.lock().unwrap()[0].clone();
    assert!(r.html.contains("%unsubscribe_url%"), "{}", r.html);
    assert_eq!(r.list_unsubscribe, "");
    let page = reqwest::get(app.url("/u/anything")).await.unwrap();
    assert_eq!(page.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn sendgrid_and_postmark_feedback_suppress_addresses_for_the_next_campaign() {
    use conductor::domain::feedback::{sendgrid_public_key, sendgrid_signature};
    let signing = p256::ecdsa::SigningKey::from_slice(&[3; 32]).unwrap();
    let (sink, base) = Sink::start().await;
    let app = spawn_app_with(|c| {
        send_to(c, &base);
        c.feedback.sendgrid.public_key = Some(sendgrid_public_key(signing.verifying_key()));
        c.feedback.postmark.username = Some("postmark".into());
        c.feedback.postmark.password = Some("postmark-webhook-password".into());
    })
    .await;
    let client = reqwest::Client::new();
    let sendgrid = |body: Vec<u8>, ts: &str, sig: String| {
        client
            .post(app.url("/v1/feedback/sendgrid"))
            .header("content-type", "application/json")
            .header("X-Twilio-Email-Event-Webhook-Timestamp", ts)
            .header("X-Twilio-Email-Event-Webhook-Signature", sig)
            .body(body)
            .send()
    };
    let events = serde_json::to_vec(&json!([
        {"email": "r1@example.com", "event": "bounce", "type": "bounce", "sg_event_id": "sg-1", "reason": "550 unknown user"},
        {"email": "r4@example.com", "event": "deferred", "sg_event_id": "sg-2"}
    ]))
    .unwrap();
    let ts = now_s().to_string();
    let sig = sendgrid_signature(&signing, &ts, &events);
    for _ in 0..2 {
        // SendGrid retries until it gets a 2xx; the retry records nothing new.
        let r = sendgrid(events.clone(), &ts, sig.clone()).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let forged = serde_json::to_vec(&json!([
        {"email": "r3@example.com", "event": "spamreport", "sg_event_id": "sg-3"}
    ]))
    .unwrap();
    let r = sendgrid(forged, &ts, sig.clone()).await.unwrap();
    expect_problem(r, 401, "/problems/bad-signature").await;

    let postmark = |auth: Option<(&str, &str)>, body: Value| {
        let mut r = client.post(app.url("/v1/feedback/postmark")).json(&body);
        if let Some((u, p)) = auth {
            r = r.basic_auth(u, Some(p));
        }
        r.send()
    };
    let complaint = json!({
        "RecordType": "SpamComplaint", "ID": 42, "Type": "SpamComplaint", "Email": "R2@example.com",
        "Metadata": {"campaign_id": "c0", "recipient_id": "2"}
    });
    let ok = Some(("postmark", "postmark-webhook-password"));
    assert_eq!(postmark(ok, complaint.clone()).await.unwrap().status(), 200);
    let unsub = json!({"RecordType": "SubscriptionChange", "MessageID": "m", "Recipient": "r3@example.com", "SuppressSending": true});
    for wrong in [None, Some(("postmark", "not-the-password-at-all"))] {
        let r = postmark(wrong, unsub.clone()).await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("www-authenticate").is_some());
    }
    expect_problem(
        postmark(ok, json!({"Email": "x@example.com"}))
            .await
            .unwrap(),
        400,
        "/problems/validation",
    )
    .await;

    // r1 (SendGrid hard bounce) and r2 (Postmark complaint) are skipped; r3's unauthenticated
    // unsubscribe and r4's deferral change nothing.
    next_campaign_skips_r1_and_r2(&app, &sink).await;
    app.stop().await;
}

/// A campaign to r0…r4 completes with r1 and r2 suppressed and never mailed.
pub async fn next_campaign_skips_r1_and_r2(app: &TestApp, sink: &Sink) {
    let id = app.create(&inline_campaign(recipients(5))).await;
    let c = app
        .wait_for(&id, Duration::from_secs(60), is_completed)
        .await;
    assert_eq!(c["counts"]["sent"], 3, "{c}");
    assert_eq!(c["counts"]["suppressed"], 2, "{c}");
    let mailed: Vec<String> = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.to.clone())
        .collect();
    for gone in ["<r1@example.com>", "<r2@example.com>"] {
        assert!(!mailed.iter().any(|to| to.contains(gone)), "{mailed:?}");
    }
}

#[tokio::test]
async fn closed_feedback_endpoints_say_how_to_open_them() {
    let app = spawn_app().await;
    for provider in ["sendgrid", "postmark", "ses"] {
        let p = expect_problem(
            app.post_json(&format!("/v1/feedback/{provider}"), &json!([]))
                .await,
            403,
            "/problems/feedback-disabled",
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains(provider), "{p}");
    }
    app.stop().await;
}
