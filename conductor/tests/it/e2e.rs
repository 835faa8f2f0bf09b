//! Whole campaigns through the real server.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::sink::{send_to, Sink};
use crate::support::*;

/// Every `.eml` in a campaign's outbox folder, by recipient address.
pub fn outbox(app: &TestApp, id: &str) -> HashMap<String, String> {
    outbox_in(&app.dir.path().join("outbox").join(id))
}

/// Every `.eml` in one outbox folder (an `[provider.outbox] dir` and a campaign id), by address.
pub fn outbox_in(dir: &std::path::Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(
            path.extension().unwrap(),
            "eml",
            "stray file {}",
            path.display()
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let to = text.lines().find(|l| l.starts_with("To: ")).unwrap();
        // `To: Name <addr>`, or `To: addr` for a recipient without a name.
        let addr = match (to.find('<'), to.find('>')) {
            (Some(a), Some(b)) => to[a + 1..b].to_string(),
            _ => to["To: ".len()..].trim().to_string(),
        };
        assert!(
            out.insert(addr.clone(), text).is_none(),
            "{addr} mailed twice"
        );
    }
    out
}

#[tokio::test]
async fn a_csv_campaign_reaches_every_recipient_exactly_once() {
    let app = spawn_app().await;
    let mut csv = String::from("email,name,city\n");
    for i in 0..250 {
        csv += &format!("r{i}@example.com,Zoë {i},Köln\n");
    }
    csv += "R7@example.com,Duplicate,Köln\n";
    let form = reqwest::multipart::Form::new()
        .part("campaign", reqwest::multipart::Part::text(json!({"name": "CSV", "from": "News <news@example.com>", "subject": "Für {{name}}", "html": "<p>Hallo {{name}} in {{city}}</p>"}).to_string()))
        .part("recipients", reqwest::multipart::Part::text(csv).file_name("list.csv"));
    let r = app.post_multipart(form).await;
    assert_eq!(r.status(), 201);
    let c: Value = r.json().await.unwrap();
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(
        (
            c["counts"]["total"].as_i64(),
            c["duplicates_removed"].as_i64(),
            c["batches"].as_i64()
        ),
        (Some(250), Some(1), Some(3))
    );

    let done = app
        .wait_for(&id, Duration::from_secs(60), is_completed)
        .await;
    let k = &done["counts"];
    assert_eq!(
        (
            k["sent"].as_i64(),
            k["pending"].as_i64(),
            k["failed"].as_i64(),
            k["unknown"].as_i64(),
            k["rendered"].as_i64()
        ),
        (Some(250), Some(0), Some(0), Some(0), Some(250))
    );
    let mails = outbox(&app, &id);
    assert_eq!(mails.len(), 250);
    for i in 0..250 {
        let eml = &mails[&format!("r{i}@example.com")];
        assert!(eml.contains("Content-Type: multipart/alternative"));
    }
    // The ledger accounts for every request. (Its cap binds in governor.rs's manual-clock test.)
    let minutes = app.get_json("/v1/minutes?since=2000-01-01T00:00:00Z").await;
    let used: i64 = minutes["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["used"].as_i64().unwrap())
        .sum();
    assert_eq!(used, 250);
    app.stop().await;
}

#[tokio::test]
async fn the_named_newsletter_template_renders_with_inlined_css() {
    let app = spawn_app().await;
    let articles = json!([{"title": "One & two", "summary": "s", "url": "https://e.example/1"}]);
    let rs: Vec<Value> = (0..5)
        .map(|i| json!({"email": format!("n{i}@example.org"), "name": "Łukasz Żółć", "data": {"first_name": "Łukasz", "city": "Kraków", "member_since": 2020, "articles": articles}}))
        .collect();
    let r = app.post_json("/v1/campaigns", &json!({"name": "Newsletter", "from": "Gazette <g@example.com>", "template": "newsletter", "recipients": rs})).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.wait_for(&id, Duration::from_secs(30), is_completed)
        .await;
    let mails = outbox(&app, &id);
    let eml = &mails["n3@example.org"];
    assert!(eml.contains("Subject: =?utf-8?"), "{eml}");
    assert!(
        eml.contains("style=3D\"margin: 0 0 8px 0;"),
        "CSS is inlined into the HTML part"
    );
    app.stop().await;
}

#[tokio::test]
async fn pause_resume_and_cancel() {
    // 120 per minute: slow enough that the campaign is still running when we act on it.
    let app = spawn_app_with(|c| c.governor.per_minute = 120).await;
    let id = app.create(&inline_campaign(recipients(200))).await;
    app.wait_for(&id, Duration::from_secs(30), |c| {
        c["counts"]["sent"].as_i64() > Some(0)
    })
    .await;

    let paused: Value = app.act(&id, "pause").await.json().await.unwrap();
    assert_eq!(paused["status"], "paused");
    // Sending stops: once what was in flight is reported, nothing more goes out while paused
    // (a lease covers at most 5 s of slots; no new one is granted to a paused campaign).
    let settled = app
        .wait_for(&id, Duration::from_secs(30), |c| {
            c["status"] == "paused" && c["counts"]["in_flight"] == 0
        })
        .await;
    let sent = settled["counts"]["sent"].as_i64().unwrap();
    assert_eq!(outbox(&app, &id).len() as i64, sent);
    assert!(sent < 200, "{settled}");
    // Five slots' worth at 120 per minute.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let still = app.get_json(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(still["counts"]["sent"].as_i64(), Some(sent), "{still}");
    assert_eq!(outbox(&app, &id).len() as i64, sent);
    let resumed: Value = app.act(&id, "resume").await.json().await.unwrap();
    assert_eq!(resumed["status"], "running");
    let r = app.act(&id, "cancel").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");
    // In-flight sends finish and report; everything else is cancelled; nothing is left open.
    let c = app
        .wait_for(&id, Duration::from_secs(30), |c| {
            c["counts"]["pending"] == 0
        })
        .await;
    let k = &c["counts"];
    assert!(k["cancelled"].as_i64().unwrap() > 0, "{c}");
    assert_eq!(
        k["sent"].as_i64().unwrap() + k["cancelled"].as_i64().unwrap(),
        200,
        "{c}"
    );
    assert_eq!(outbox(&app, &id).len() as i64, k["sent"].as_i64().unwrap());
    // A cancelled campaign cannot be resumed; unknown actions are 404.
    let r = app.act(&id, "resume").await;
    expect_problem(r, 409, "/problems/conflict").await;
    let r = app.act(&id, "explode").await;
    expect_problem(r, 404, "/problems/not-found").await;
    app.stop().await;
}

#[tokio::test]
async fn through_mailgun_every_recipient_arrives_once_at_the_sink() {
    let (sink, base) = Sink::start().await;
    let app = spawn_app_with(|c| {
        send_to(c, &base);
    })
    .await;
    let id = app.create(&inline_campaign(recipients(150))).await;
    let c = app
        .wait_for(&id, Duration::from_secs(60), is_completed)
        .await;
    assert_eq!(c["counts"]["sent"], 150);
    let received = sink.received.lock().unwrap().clone();
    let mut ids: Vec<i64> = received
        .iter()
        .map(|r| r.recipient_id.parse().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..150).collect::<Vec<_>>());
    assert!(received.iter().all(|r| r.campaign_id == id));
    assert!(received
        .iter()
        .any(|r| r.to == "\"Zoë 3\" <r3@example.com>"));
    assert!(received.iter().all(|r| r.at_ms > 0));
    assert_eq!(sink.per_minute().values().sum::<usize>(), 150);
    app.stop().await;
}

#[tokio::test]
async fn a_restart_mid_campaign_loses_no_one_and_sends_no_one_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.governor.per_minute = 1_200; // 20/s: a few seconds for 100
    let app = spawn_app_in(dir, config.clone(), None).await;
    let id = app.create(&inline_campaign(recipients(100))).await;
    app.wait_for(&id, Duration::from_secs(60), |c| {
        c["counts"]["sent"].as_i64().unwrap() >= 10
    })
    .await;
    // A graceful stop mid-campaign: leases in progress report what they did and hand back the rest.
    let dir = app.stop().await;

    let app = spawn_app_in(dir, config, None).await;
    let c = app
        .wait_for(&id, Duration::from_secs(60), is_completed)
        .await;
    assert_eq!(
        (
            c["counts"]["sent"].as_i64(),
            c["counts"]["unknown"].as_i64()
        ),
        (Some(100), Some(0)),
        "{c}"
    );
    let files = std::fs::read_dir(app.dir.path().join("outbox").join(&id))
        .unwrap()
        .count();
    assert_eq!(files, 100);
    app.stop().await;
}

#[tokio::test]
async fn a_campaign_on_postgres_reaches_every_recipient_exactly_once() {
    let schema = PgSchema::create().await;
    let url = schema.url.clone();
    let app = spawn_app_with(|c| c.store.url = url).await;
    let id = app.create(&inline_campaign(recipients(230))).await;
    let c = app
        .wait_for(&id, Duration::from_secs(60), is_completed)
        .await;
    assert_eq!(
        (c["counts"]["sent"].as_i64(), c["batches"].as_i64()),
        (Some(230), Some(3))
    );
    assert_eq!(outbox(&app, &id).len(), 230);
    app.stop().await;
    schema.drop().await;
}
