//! SES feedback through SNS on a running conductor: deliveries signed here as SNS signs them (a
//! generated key and certificate) suppress the addresses they name; tampered, misdirected, stale and
//! repeated deliveries change nothing, and a subscription is confirmed only towards SNS.

use conductor::startup::Hooks;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::sink::{send_to, Sink};
use crate::sns_signing::{fetcher, keys, sign_with, signed, CERT_URL};
use crate::support::*;

const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:ses-feedback";

fn delivery(ses: Value, id: &str, at: chrono::DateTime<chrono::Utc>) -> Value {
    json!({
        "Type": "Notification",
        "MessageId": id,
        "TopicArn": TOPIC,
        "Message": ses.to_string(),
        "Timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "SignatureVersion": "1",
        "SigningCertURL": CERT_URL,
    })
}

fn bounce(email: &str) -> Value {
    json!({
        "notificationType": "Bounce",
        "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": email, "diagnosticCode": "smtp; 550 5.1.1 unknown"}]},
        "mail": {"messageId": "0100018c-ses", "destination": [email]}
    })
}

async fn feedback_rows(app: &TestApp) -> i64 {
    let url = format!("sqlite://{}", app.dir.path().join("conductor.db").display());
    let mut db = sqlx::AnyConnection::connect(&url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM feedback WHERE provider = 'ses'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn ses_bounces_and_complaints_through_sns_suppress_addresses() {
    sqlx::any::install_default_drivers();
    let (sink, base) = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    send_to(&mut config, &base);
    config.feedback.ses.topic_arns = vec![TOPIC.into()];
    let certs = fetcher();
    let app = spawn_hooked(
        dir,
        config,
        None,
        Hooks {
            sns_certs: certs.clone(),
        },
    )
    .await;
    let client = reqwest::Client::new();
    // SNS posts text/plain.
    let post = |v: &Value| {
        client
            .post(app.url("/v1/feedback/ses"))
            .header("content-type", "text/plain; charset=UTF-8")
            .header("x-amz-sns-message-type", v["Type"].as_str().unwrap_or(""))
            .body(serde_json::to_vec(v).unwrap())
            .send()
    };
    let now = chrono::Utc::now();

    // A genuine hard bounce, delivered twice (SNS retries with the same MessageId): recorded once.
    let first = signed(delivery(bounce("R1@example.com"), "sns-1", now));
    for _ in 0..2 {
        assert_eq!(post(&first).await.unwrap().status(), 200);
    }
    assert_eq!(feedback_rows(&app).await, 1);

    // Event publishing, with the tags the SES adapter sets.
    let complaint = json!({
        "eventType": "Complaint",
        "complaint": {"complaintFeedbackType": "abuse", "complainedRecipients": [{"emailAddress": "r2@example.com"}]},
        "mail": {"messageId": "0100-x", "tags": {"campaign_id": ["c0"], "recipient_id": ["2"]}}
    });
    let r = post(&signed(delivery(complaint, "sns-2", now)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Tampered after signing: the Message names someone else.
    let mut tampered = signed(delivery(bounce("r3@example.com"), "sns-3", now));
    tampered["Message"] = bounce("r4@example.com").to_string().into();
    expect_problem(
        post(&tampered).await.unwrap(),
        403,
        "/problems/bad-signature",
    )
    .await;
    // Signed with another key.
    let mut forged = delivery(bounce("r3@example.com"), "sns-4", now);
    sign_with(&mut forged, &keys().other);
    expect_problem(post(&forged).await.unwrap(), 403, "/problems/bad-signature").await;
    // Genuinely signed, but for a topic this conductor does not take feedback from.
    let mut stranger = delivery(bounce("r3@example.com"), "sns-5", now);
    stranger["TopicArn"] = "arn:aws:sns:eu-west-1:999999999999:other".into();
    let p = expect_problem(
        post(&signed(stranger)).await.unwrap(),
        403,
        "/problems/bad-signature",
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("999999999999"),
        "{p}"
    );
    // Signed two hours ago: a replay, not a retry.
    let old = signed(delivery(
        bounce("r3@example.com"),
        "sns-6",
        now - chrono::Duration::hours(2),
    ));
    expect_problem(post(&old).await.unwrap(), 400, "/problems/stale-webhook").await;
    // Not SNS at all, and SNS wrapping something that is not SES.
    let r = client
        .post(app.url("/v1/feedback/ses"))
        .body("{\"hello\": 1}")
        .send()
        .await
        .unwrap();
    expect_problem(r, 400, "/problems/validation").await;
    let mut not_ses = delivery(json!({}), "sns-7", now);
    not_ses["Message"] = "plain words".into();
    expect_problem(
        post(&signed(not_ses)).await.unwrap(),
        400,
        "/problems/validation",
    )
    .await;
    // A header that disagrees with the body.
    let r = client
        .post(app.url("/v1/feedback/ses"))
        .header("x-amz-sns-message-type", "SubscriptionConfirmation")
        .body(serde_json::to_vec(&first).unwrap())
        .send()
        .await
        .unwrap();
    expect_problem(r, 400, "/problems/validation").await;

    // A genuine confirmation whose SubscribeURL is not SNS: refused, and never fetched.
    let bait = wiremock::MockServer::start().await;
    let confirmation = signed(json!({
        "Type": "SubscriptionConfirmation",
        "MessageId": "c-1",
        "Token": "2336412f37",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic.",
        "SubscribeURL": format!("{}/confirm", bait.uri()),
        "Timestamp": now.to_rfc3339(),
        "SignatureVersion": "2",
        "SigningCertURL": CERT_URL,
    }));
    assert_eq!(post(&confirmation).await.unwrap().status(), 502);
    assert!(bait.received_requests().await.unwrap().is_empty());
    assert_eq!(
        certs.fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the certificate is fetched once and cached"
    );
    assert_eq!(feedback_rows(&app).await, 2);

    // The next campaign skips r1 (bounce) and r2 (complaint) and mails the rest.
    crate::feedback::next_campaign_skips_r1_and_r2(&app, &sink).await;
    app.stop().await;
}
