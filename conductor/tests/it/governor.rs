//! The governor on a running `serve`, on a manual clock: a config edit changes the tokens granted
//! from the next calendar minute, an invalid edit keeps the old cap and says why, and both are in
//! `GET /v1/governor`'s audit log; `PUT /v1/campaigns/{id}` changes a campaign's own cap the same way.

use std::sync::Arc;
use std::time::Duration;

use conductor::startup::Hooks;
use sender::clock::ManualClock;
use sender::Clock;
use serde_json::{json, Value};

use crate::support::*;

const M: i64 = 1_700_000_040_000; // a minute boundary

/// Moves the manual clock to `until` a quarter second at a time, never ahead of the app: at each
/// step it waits (in real time, bounded) until every slot half a second past has its message in the
/// outbox. A minute of cap `c` has its slots at `c` even steps over the minute less its 2 s margin;
/// `cap(minute)` says the cap in force in each minute from `M`, and `total` what the campaign holds.
/// (The first lease may come a quarter second late, when an idle sender asks again.)
async fn drive(
    app: &TestApp,
    clock: &ManualClock,
    id: &str,
    until: i64,
    cap: impl Fn(i64) -> usize,
    total: usize,
) {
    let owed = |t: i64| -> usize {
        let minute = sender::clock::minute_start(t);
        let before: usize = (M..minute).step_by(60_000).map(&cap).sum();
        let spacing = 58_000 / cap(minute).max(1) as i64;
        let into = t - minute - 500;
        let due = if into < 0 {
            0
        } else {
            ((into / spacing) as usize + 1).min(cap(minute))
        };
        (before + due).min(total)
    };
    let waited = std::time::Instant::now();
    while clock.now_ms() < until {
        let now = clock.now_ms();
        while sent_per_minute(app, id).values().sum::<usize>() < owed(now) {
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "at {} ms, {:?} sent, {} owed",
                now - M,
                sent_per_minute(app, id),
                owed(now)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        clock.advance(250);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn minute(app: &TestApp, scope: &str, at: i64) -> Value {
    let m = app
        .get_json(&format!(
            "/v1/minutes?scope={scope}&since={}",
            conductor::store::rfc3339(M - 60_000)
        ))
        .await;
    m["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["minute"] == conductor::store::rfc3339(at))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits (in real time, bounded) until the audit log has an entry that `matches`.
async fn audited(app: &TestApp, matches: impl Fn(&Value) -> bool) -> Value {
    let waited = std::time::Instant::now();
    loop {
        let g = app.get_json("/v1/governor").await;
        if let Some(e) = g["changes"].as_array().unwrap().iter().find(|e| matches(e)) {
            return e.clone();
        }
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "not audited: {g}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `serve` on the manual clock whose config is a watched file, with a 40-recipient campaign
/// rendered and ready; `text(governor)` is the whole file with `governor` as its `[governor]` section.
struct Watched {
    file: std::path::PathBuf,
    root: std::path::PathBuf,
}

impl Watched {
    fn text(&self, governor: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{0}/c.db\"\n[bodies]\nurl = \"file://{0}/bodies\"\n\
             [campaigns]\ntemplates_dir = \"{1}\"\n\
             [provider.outbox]\ndir = \"{0}/outbox\"\n[governor]\n{governor}",
            self.root.display(),
            templates_dir().display()
        )
    }

    fn write(&self, governor: &str) {
        std::fs::write(&self.file, self.text(governor)).unwrap();
    }
}

async fn spawn_watched(governor: &str) -> (TestApp, Arc<ManualClock>, Watched, String) {
    let dir = tempfile::tempdir().unwrap();
    let w = Watched {
        file: dir.path().join("conductor.toml"),
        root: dir.path().to_path_buf(),
    };
    w.write(governor);
    let config = conductor::config::Config::load(Some(&w.file), Vec::new()).unwrap();
    let clock = Arc::new(ManualClock::new(M));
    let app = spawn_full(
        dir,
        config,
        Some(w.file.clone()),
        Hooks::default(),
        clock.clone(),
    )
    .await;
    let id = app.create(&inline_campaign(recipients(40))).await;
    app.wait_for(&id, Duration::from_secs(30), |c| {
        c["batches_rendered"] == c["batches"]
    })
    .await;
    (app, clock, w, id)
}

#[tokio::test]
async fn a_config_edit_changes_granted_tokens_from_the_next_minute_and_a_bad_one_is_refused() {
    let (app, clock, w, id) = spawn_watched("per_minute = 5\n").await;
    let toml = |cap: &str| w.text(&format!("per_minute = {cap}\n"));
    let caps = |m: i64| if m < M + 60_000 { 5 } else { 8 };
    drive(&app, &clock, &id, M + 30_000, caps, 40).await;
    // Editors often save by writing a new file and renaming it over the old one.
    let tmp = w.file.with_extension("swp");
    std::fs::write(&tmp, toml("8")).unwrap();
    std::fs::rename(&tmp, &w.file).unwrap();
    let change = audited(&app, |e| e["scope"] == "global" && e["kind"] == "cap").await;
    assert_eq!(
        (change["old"].as_str(), change["new"].as_str()),
        (Some("5"), Some("8"))
    );
    assert_eq!(change["source"], "config file");
    let g = app.get_json("/v1/governor").await;
    assert_eq!(g["scopes"][0]["configured"], 8);
    assert_eq!(g["scopes"][0]["this_minute"]["cap"], 5, "{g}");

    drive(&app, &clock, &id, M + 90_000, caps, 40).await;
    // Invalid edits, a wrong type and a bad value: refused, the old cap kept, each reason logged.
    for (bad, says) in [("\"lots\"", "per_minute"), ("0", "governor.per_minute")] {
        std::fs::write(&w.file, toml(bad)).unwrap();
        let refused = audited(&app, |e| {
            e["kind"] == "rejected" && e["new"].as_str().is_some_and(|n| n.contains(says))
        })
        .await;
        assert_eq!(refused["source"], "config file");
        assert_eq!(app.config.borrow().governor.per_minute, 8);
    }

    drive(&app, &clock, &id, M + 180_000, caps, 40).await;
    let m0 = minute(&app, "global", M).await;
    let m1 = minute(&app, "global", M + 60_000).await;
    let m2 = minute(&app, "global", M + 120_000).await;
    assert_eq!(
        (m0["cap"].as_u64(), m0["granted"].as_u64()),
        (Some(5), Some(5)),
        "{m0}"
    );
    assert_eq!(
        (m1["cap"].as_u64(), m1["granted"].as_u64()),
        (Some(8), Some(8)),
        "{m1}"
    );
    assert_eq!(
        (m2["cap"].as_u64(), m2["granted"].as_u64()),
        (Some(8), Some(8)),
        "{m2}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_running_campaigns_own_cap_is_changed_by_put_from_the_next_minute() {
    let clock = Arc::new(ManualClock::new(M));
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let app = spawn_full(dir, config, None, Hooks::default(), clock.clone()).await;
    let mut body = inline_campaign(recipients(40));
    body["per_minute"] = 4.into();
    body["priority"] = 2.into();
    let id = app.create(&body).await;
    app.wait_for(&id, Duration::from_secs(30), |c| {
        c["batches_rendered"] == c["batches"]
    })
    .await;
    let c = app.get_json(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(
        (c["per_minute"].as_u64(), c["priority"].as_u64()),
        (Some(4), Some(2))
    );
    // 40 to send at 4 a minute from the minute's start: the last goes in the tenth minute. (The
    // first may already be out, so the forecast may count 39.)
    let eta = chrono::DateTime::parse_from_rfc3339(c["eta"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert!(
        (M + 9 * 60_000 + 45_000..=M + 10 * 60_000).contains(&eta),
        "eta {} s after the start: {c}",
        (eta - M) / 1000
    );
    assert_eq!(c["rate_per_minute"], 4, "its own cap binds: {c}");

    let caps = |m: i64| if m < M + 60_000 { 4 } else { 7 };
    drive(&app, &clock, &id, M + 20_000, caps, 40).await;
    let put = |v: Value| {
        app.client
            .put(app.url(&format!("/v1/campaigns/{id}")))
            .json(&v)
            .send()
    };
    let r = put(json!({"per_minute": 7})).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["per_minute"], 7);
    for (bad, field) in [
        (json!({"per_minute": 0}), "per_minute"),
        (json!({"per_minute": "fast"}), "per_minute"),
        (json!({"priority": 1000}), "priority"),
        (json!({"name": "x"}), "name"),
        (json!({}), "per_minute"),
    ] {
        let p = expect_problem(put(bad.clone()).await.unwrap(), 422, "/problems/validation").await;
        assert!(p.to_string().contains(field), "{bad} → {p}");
    }
    let r = app
        .client
        .put(app.url("/v1/campaigns/nope"))
        .json(&json!({"per_minute": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    drive(&app, &clock, &id, M + 120_000, caps, 40).await;
    let scope = format!("campaign:{id}");
    let m0 = minute(&app, &scope, M).await;
    let m1 = minute(&app, &scope, M + 60_000).await;
    assert_eq!(
        (m0["cap"].as_u64(), m0["granted"].as_u64()),
        (Some(4), Some(4)),
        "{m0}"
    );
    assert_eq!(
        (m1["cap"].as_u64(), m1["granted"].as_u64()),
        (Some(7), Some(7)),
        "{m1}"
    );
    let e = audited(&app, |e| e["scope"] == scope.as_str()).await;
    assert_eq!(
        (e["old"].as_str(), e["new"].as_str()),
        (Some("4"), Some("7"))
    );
    app.stop().await;
}

/// Messages in the campaign's outbox by the calendar minute of their `Date` (the provider's clock:
/// the manual one).
fn sent_per_minute(app: &TestApp, id: &str) -> std::collections::BTreeMap<i64, usize> {
    let dir = app.dir.path().join("outbox").join(id);
    let mut per = std::collections::BTreeMap::new();
    if !dir.exists() {
        return per;
    }
    // Only whole messages: the outbox writes each to a temporary name first.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let date = text
            .lines()
            .find_map(|l| l.strip_prefix("Date: "))
            .expect("a Date header");
        let at = chrono::DateTime::parse_from_rfc2822(date.trim())
            .unwrap()
            .timestamp_millis();
        *per.entry(sender::clock::minute_start(at)).or_default() += 1;
    }
    per
}

#[tokio::test]
async fn a_campaign_larger_than_the_cap_gets_exactly_the_cap_in_each_calendar_minute() {
    // 3 a minute, spread over the minute less its 2 s margin: slots at +0, +19.3 and +38.7 s.
    const CAP: usize = 3;
    let clock = Arc::new(ManualClock::new(M));
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.governor.per_minute = CAP as u32;
    let app = spawn_full(dir, config, None, Hooks::default(), clock.clone()).await;
    let id = app.create(&inline_campaign(recipients(8))).await;
    app.wait_for(&id, Duration::from_secs(30), |c| {
        c["batches_rendered"] == c["batches"]
    })
    .await;

    drive(&app, &clock, &id, M + 180_000, |_| CAP, 8).await;
    let per = sent_per_minute(&app, &id);
    assert_eq!(
        per.into_iter().collect::<Vec<_>>(),
        vec![(M, 3), (M + 60_000, 3), (M + 120_000, 2)],
        "arrivals per calendar minute: the cap in each full one, none over"
    );
    let c = app
        .wait_for(&id, Duration::from_secs(30), is_completed)
        .await;
    assert_eq!(c["counts"]["sent"], 8, "{c}");
    app.stop().await;
}

#[tokio::test]
async fn warm_up_domain_caps_and_quiet_hours_are_taken_from_config_edits() {
    // The manual clock starts at 22:14 UTC on 2023-11-14.
    let (app, clock, w, id) = spawn_watched("per_minute = 5\n").await;
    // 22:14 at 5; 22:15 on warm-up day 1 (3); 22:16 with example.com capped at 2; 22:17 quiet;
    // 22:18 at the domain's 2 again.
    let caps = |m: i64| match (m - M) / 60_000 {
        0 => 5,
        1 => 3,
        2 | 4 => 2,
        _ => 0,
    };
    drive(&app, &clock, &id, M + 30_000, caps, 40).await;
    w.write("per_minute = 5\n[governor.schedule]\nwarmup_start = \"2023-11-14\"\nwarmup = [3]\n");
    audited(&app, |e| e["kind"] == "schedule").await;
    drive(&app, &clock, &id, M + 90_000, caps, 40).await;
    w.write(
        "per_minute = 5\n[governor.domains]\n\"example.com\" = 2\n[governor.schedule]\n\
         warmup_start = \"2023-11-14\"\nwarmup = [3]\nquiet_hours = [\"22:17-22:18\"]\n",
    );
    audited(&app, |e| e["scope"] == "domain:example.com").await;
    drive(&app, &clock, &id, M + 299_500, caps, 40).await;
    let per = sent_per_minute(&app, &id);
    assert_eq!(
        per.into_iter().collect::<Vec<_>>(),
        vec![(M, 5), (M + 60_000, 3), (M + 120_000, 2), (M + 240_000, 2)],
        "warm-up from the minute after its edit, the domain cap likewise, nothing in quiet hours"
    );
    let d = minute(&app, "domain:example.com", M + 120_000).await;
    assert_eq!(
        (d["cap"].as_u64(), d["granted"].as_u64()),
        (Some(2), Some(2)),
        "{d}"
    );
    app.stop().await;
}
