//! `GET /v1/campaigns/{id}/events` on a running conductor: frames in order with increasing ids,
//! resumption with `Last-Event-ID`, and fifty clients at once during a send.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: i64,
    event: String,
    data: Value,
}

/// Reads events from a stream until `done` holds for one (bounded in time).
async fn read_until(
    mut r: reqwest::Response,
    limit: Duration,
    done: impl Fn(&Sse) -> bool,
) -> Vec<Sse> {
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let chunk = tokio::time::timeout_at(deadline, r.chunk())
            .await
            .expect("stream did not reach the expected event in time")
            .unwrap()
            .expect("stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            // Comments (keep-alives) carry no id.
            let Some(id) = id else { continue };
            let e = Sse {
                id,
                event,
                data: serde_json::from_str(&data).unwrap(),
            };
            let stop = done(&e);
            out.push(e);
            if stop {
                return out;
            }
        }
    }
}

fn completed(e: &Sse) -> bool {
    e.event == "progress" && e.data["status"] == "completed"
}

#[tokio::test]
async fn progress_streams_in_order_and_resumes_from_last_event_id() {
    let app = spawn_app().await;
    let id = app.create(&inline_campaign(recipients(200))).await;
    assert_eq!(app.act(&id, "pause").await.status(), 200);
    let url = app.url(&format!("/v1/campaigns/{id}/events"));
    // Read until the stream shows the pause, then drop the connection.
    let first = read_until(
        app.client.get(&url).send().await.unwrap(),
        Duration::from_secs(20),
        |e| {
            e.event == "progress"
                && e.data["status"] == "paused"
                && e.data["counts"]["in_flight"] == 0
        },
    )
    .await;
    let sent = |e: &Sse| e.data["counts"]["sent"].as_i64().unwrap_or(0);
    for w in first.windows(2) {
        assert!(w[0].id < w[1].id, "ids increase: {first:?}");
        if w[0].event == "progress" && w[1].event == "progress" {
            assert!(sent(&w[0]) <= sent(&w[1]), "sent never goes down");
        }
    }
    let p = first.last().unwrap();
    for key in [
        "counts",
        "minute",
        "rate_per_minute",
        "eta",
        "batches_rendered",
    ] {
        assert!(p.data.get(key).is_some(), "{key} in {:?}", p.data);
    }
    // Resume, then reconnect where we left off: only later frames, up to completion.
    let last = p.id;
    assert_eq!(app.act(&id, "resume").await.status(), 200);
    let rest = read_until(
        app.client
            .get(&url)
            .header("Last-Event-ID", last.to_string())
            .send()
            .await
            .unwrap(),
        Duration::from_secs(60),
        completed,
    )
    .await;
    assert!(rest.iter().all(|e| e.id > last), "{rest:?}");
    assert!(
        rest.iter()
            .any(|e| e.event == "status" && e.data["status"] == "completed"),
        "a status change is its own event: {rest:?}"
    );
    assert_eq!(rest.last().unwrap().data["counts"]["sent"], 200);
    assert!(sent(&rest[0]) >= sent(p));
    // A client arriving after the end gets the final state at once.
    let late = read_until(
        app.client.get(&url).send().await.unwrap(),
        Duration::from_secs(10),
        |_| true,
    )
    .await;
    assert!(completed(&late[0]), "{late:?}");
    // Unknown campaigns are a problem, not a stream.
    let r = app
        .client
        .get(app.url("/v1/campaigns/nope/events"))
        .send()
        .await
        .unwrap();
    expect_problem(r, 404, "/problems/not-found").await;
    app.stop().await;
}

#[tokio::test]
async fn fifty_clients_watch_one_send_to_the_end() {
    let app = spawn_app_with(|c| c.governor.per_minute = 1_200).await;
    let id = app.create(&inline_campaign(recipients(40))).await;
    let url = app.url(&format!("/v1/campaigns/{id}/events"));
    let watchers: Vec<_> = (0..50)
        .map(|_| {
            let (client, url) = (app.client.clone(), url.clone());
            tokio::spawn(async move {
                let r = client.get(&url).send().await.unwrap();
                read_until(r, Duration::from_secs(90), completed).await
            })
        })
        .collect();
    for w in watchers {
        let frames = w.await.unwrap();
        assert_eq!(frames.last().unwrap().data["counts"]["sent"], 40);
        for pair in frames.windows(2) {
            assert!(pair[0].id < pair[1].id);
        }
    }
    let c = app.get_json(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(c["counts"]["sent"], 40);
    assert_eq!(
        crate::e2e::outbox(&app, &id).len(),
        40,
        "each recipient once"
    );
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_sends_leases_ledger_and_queues() {
    let app = spawn_app().await;
    let id = app.create(&inline_campaign(recipients(25))).await;
    app.wait_for(&id, Duration::from_secs(60), is_completed)
        .await;
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    };
    assert_eq!(
        value("conductor_sends_total{provider=\"outbox\",outcome=\"sent\"}"),
        25.0
    );
    assert_eq!(
        value("conductor_provider_request_seconds_count{provider=\"outbox\"}"),
        25.0
    );
    assert_eq!(
        value("conductor_ledger_tokens_granted_total{scope=\"global\"}"),
        25.0
    );
    assert!(value("conductor_leases_total{reply=\"granted\"}") >= 1.0);
    assert_eq!(value("conductor_render_batch_seconds_count"), 1.0);
    assert_eq!(value("conductor_campaigns{status=\"completed\"}"), 1.0);
    app.stop().await;
}
