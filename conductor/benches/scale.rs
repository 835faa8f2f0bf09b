//! Costs at scale: what a campaign of N recipients costs per operation, next to the same at a small N,
//! in one run.
//!
//! For each size, a conductor (the real application, on loopback, its embedded sender off so the
//! bench alone leases) takes a campaign whose CSV list is generated as it is uploaded — a multipart
//! `POST /v1/campaigns`, streamed — and the bench reports:
//! - the time until the 201, and the conductor process's peak RSS during the upload (the kernel's
//!   high-water mark, reset just before; the generator's own memory is a few buffers);
//! - lease and report latency (p50/p99, the conductor's store calls as the worker API makes them, 50
//!   recipients per lease, every one reported sent) at the start of the campaign, and again once
//!   90 % of it is sent. The bench gets there through the store: one SQL statement marks the
//!   first 90 % of recipients sent and their batches rendered, and the counters are rebuilt from
//!   the rows, the way `Store::recount` counts them (checked: it must find nothing to fix); on
//!   PostgreSQL the table is vacuumed after that statement, as autovacuum would have kept up;
//! - `GET /v1/campaigns/{id}` latency p50/p99 through HTTP;
//! - for the big campaign, what a Mailgun-compatible sink on loopback receives in each of three whole
//!   calendar minutes (`--minutes N`; 0 skips it) when the rest of the campaign is sent at the
//!   default cap of 6,000 by the embedded sender's code, from a minute's boundary on. Every minute
//!   should hold exactly the cap.
//!
//! ```text
//! cargo bench -p conductor --bench scale                          # 1,000,000 on SQLite, 10,000 beside it
//! cargo bench -p conductor --bench scale -- 10000000 --postgres postgres://127.0.0.1/test
//! ```
//! With `--postgres`, the run uses a fresh schema of that database and drops it at the end.

#[path = "../tests/it/sink.rs"]
#[allow(dead_code)]
mod sink;

use std::sync::Arc;
use std::time::{Duration, Instant};

use conductor::config::Config;
use conductor::startup::Application;
use conductor::store::{LeaseRules, ReportRules, Store};
use sender::{Clock, LeaseReply, Outcome, RecipientOutcome, SystemClock};
use serde_json::{json, Value};
use sqlx::Connection;

/// The conductor binary's allocator, so the bench measures what ships (the system allocator's
/// per-thread arenas cost the send path about a fifth of its CPU in malloc and free).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Leases measured per phase, at most: fewer when the part of the campaign a phase leases from is
/// smaller (a small campaign's last 10 %).
const LEASES: usize = 200;
const WANT: u32 = 50;
/// The default per-minute cap, which the capped phase sends at.
const CAP: u32 = 6_000;

struct Args {
    big: u64,
    small: u64,
    postgres: Option<String>,
    /// Whole calendar minutes sent at the default cap, for the big campaign only.
    minutes: u32,
}

fn args() -> Args {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let big = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || !args[i - 1].starts_with("--")))
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(1_000_000);
    Args {
        big,
        small: flag("--small")
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000),
        postgres: flag("--postgres"),
        minutes: flag("--minutes").and_then(|s| s.parse().ok()).unwrap_or(3),
    }
}

fn peak_rss_reset() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set since the last reset, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1_000.0
}

fn summary(mut d: Vec<Duration>) -> String {
    d.sort();
    format!("p50 {:.2} ms, p99 {:.2} ms", pct(&d, 0.5), pct(&d, 0.99))
}

/// A CSV of `n` rows, made as it is sent, 4,000 rows a piece.
fn csv_body(n: u64) -> reqwest::Body {
    let pieces = futures::stream::unfold(0u64, move |from| async move {
        if from > n {
            return None;
        }
        let mut s = String::new();
        if from == 0 {
            s.push_str("email,name,city\n");
        }
        let to = (from + 4_000).min(n);
        for i in from..to {
            s.push_str(&format!("user{i}@example{}.com,User {i},Köln\n", i % 97));
        }
        let next = if to == n { n + 1 } else { to };
        Some((Ok::<_, std::io::Error>(s.into_bytes()), next))
    });
    reqwest::Body::wrap_stream(pieces)
}

struct Run {
    accept: Duration,
    rss: f64,
    start: (Vec<Duration>, Vec<Duration>),
    deep: (Vec<Duration>, Vec<Duration>),
    progress: Vec<Duration>,
    /// Messages the sink received in each whole calendar minute of the capped phase.
    minutes: Vec<(i64, usize)>,
}

async fn run(n: u64, url: &str, dir: &std::path::Path, minutes: u32) -> Run {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.store.url = url.to_string();
    config.bodies.url = format!("file://{}", dir.join("bodies").display());
    let (sink, sink_url) = sink::Sink::start().await;
    sink::send_to(&mut config, &sink_url);
    config.workers.embedded_sender = false;
    config.governor.per_minute = CAP;
    config.campaigns.templates_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../templates").into();
    let app = Application::build_with(config, None, Arc::new(SystemClock), Default::default())
        .await
        .expect("conductor starts");
    // The conductor's own store: on SQLite its one writer connection is the only one.
    let svc = app.service();
    let store = svc.store.clone();
    let base = format!("http://{}", app.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();
    let campaign = json!({
        "name": format!("scale-{n}"), "from": "News <news@mg.example.com>",
        "subject": "Winter news for {{name}}", "html": "<h1>Hello {{name}}</h1><p>News from {{city}}.</p>",
    });
    let form = reqwest::multipart::Form::new()
        .part(
            "campaign",
            reqwest::multipart::Part::text(campaign.to_string())
                .mime_str("application/json")
                .unwrap(),
        )
        .part(
            "recipients",
            reqwest::multipart::Part::stream(csv_body(n))
                .file_name("list.csv")
                .mime_str("text/csv")
                .unwrap(),
        );
    peak_rss_reset();
    let t = Instant::now();
    let r = http
        .post(format!("{base}/v1/campaigns"))
        .multipart(form)
        .send()
        .await
        .expect("create");
    let accept = t.elapsed();
    let rss = peak_rss_mib();
    let status = r.status();
    let created: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["counts"]["total"].as_u64(), Some(n), "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    let clock = SystemClock;
    let start = lease_and_report(&store, &clock, &base, &http, &id, n * 4 / 10).await;
    move_cursor(url, &id, n).await;
    let wrong = store.recount(&id).await.unwrap();
    assert!(
        wrong.is_empty(),
        "counters after moving the cursor: {wrong:?}"
    );
    let deep = lease_and_report(&store, &clock, &base, &http, &id, n / 10).await;
    let mut progress = Vec::with_capacity(500);
    for _ in 0..500 {
        let t = Instant::now();
        let r = http
            .get(format!("{base}/v1/campaigns/{id}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let _ = r.bytes().await;
        progress.push(t.elapsed());
    }
    let minutes = capped_minutes(&svc, &sink, minutes).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    Run {
        accept,
        rss,
        start,
        deep,
        progress,
        minutes,
    }
}

/// Sends the rest of the campaign at the configured cap (the default 6,000) for `whole` calendar
/// minutes, with the embedded sender (the one `serve` runs, built by `startup::embedded_sender`)
/// against the Mailgun-compatible sink; returns what the sink received in each of those minutes.
/// It starts on a minute's boundary: the bench's own leases opened the current minute with no cap.
async fn capped_minutes(
    svc: &conductor::http::service::Service,
    sink: &sink::Sink,
    whole: u32,
) -> Vec<(i64, usize)> {
    if whole == 0 {
        return Vec::new();
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let first = sender::clock::minute_end(clock.now_ms());
    clock.sleep_until(first).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = conductor::startup::embedded_sender(&svc.work, stop.clone()).expect("sender");
    let running = tokio::spawn(worker.run());
    let end = first + i64::from(whole) * 60_000;
    eprintln!(
        "  sending at {}/min for {whole} whole minutes",
        svc.work.config.borrow().governor.per_minute
    );
    clock.sleep_until(end).await;
    stop.cancel();
    let _ = running.await;
    sink.per_minute()
        .into_iter()
        .filter(|(m, _)| (first..end).contains(m))
        .collect()
}

/// Leases and reports (waiting for rendered batches at the cursor when there are none yet) up to
/// [`LEASES`] times, within the next `room` recipients.
async fn lease_and_report(
    store: &Arc<dyn Store>,
    clock: &SystemClock,
    base: &str,
    http: &reqwest::Client,
    id: &str,
    room: u64,
) -> (Vec<Duration>, Vec<Duration>) {
    let times = LEASES.min((room / u64::from(WANT)).saturating_sub(1) as usize);
    let (mut leases, mut reports) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    while leases.len() < times {
        assert!(Instant::now() < deadline, "no rendered batch to lease");
        let now = clock.now_ms();
        let rules = LeaseRules {
            want: WANT,
            now,
            cap: 100_000_000,
            domains: vec![],
            margin_ms: 0,
            ttl_ms: 60_000,
            safety: Default::default(),
        };
        let t = Instant::now();
        let reply = store.lease(rules).await.expect("lease");
        let took = t.elapsed();
        let LeaseReply::Lease(lease) = reply else {
            // The render window is catching up: poke the conductor and look again.
            let _ = http.get(format!("{base}/v1/campaigns/{id}")).send().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        leases.push(took);
        let outcomes: Vec<RecipientOutcome> = lease
            .recipients
            .iter()
            .map(|&recipient_id| RecipientOutcome {
                recipient_id,
                outcome: Outcome::Sent {
                    provider_id: Some("bench".into()),
                },
                at: now,
                latency_ms: None,
            })
            .collect();
        let t = Instant::now();
        store
            .report(
                &lease.lease_id,
                &outcomes,
                true,
                ReportRules {
                    now: clock.now_ms(),
                    max_attempts: 8,
                    resend_ambiguous: false,
                },
            )
            .await
            .expect("report");
        reports.push(t.elapsed());
    }
    (leases, reports)
}

/// Marks the first 90 % of the campaign sent and their batches rendered, straight in the store,
/// and rebuilds the counters from the rows.
async fn move_cursor(url: &str, id: &str, n: u64) {
    sqlx::any::install_default_drivers();
    let url = if let Some(path) = url.strip_prefix("sqlite://") {
        format!("sqlite://{path}")
    } else {
        url.to_string()
    };
    let mut db = sqlx::AnyConnection::connect(&url).await.expect("connect");
    if url.starts_with("sqlite:") {
        // The conductor writes meanwhile: wait for its transactions rather than fail.
        sqlx::query("PRAGMA busy_timeout = 60000")
            .execute(&mut db)
            .await
            .unwrap();
    }
    let cut = (n * 9 / 10) as i64;
    let t = Instant::now();
    // One transaction: the conductor renders meanwhile, and its counter updates land after it.
    let mut tx = db.begin().await.unwrap();
    if !url.starts_with("sqlite:") {
        // The conductor's order: a batch row before its recipients, or the two deadlock.
        sqlx::query("SELECT n FROM batches WHERE campaign_id = $1 ORDER BY n FOR UPDATE")
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    }
    for sql in [
        "UPDATE recipients SET state = 'sent', lease_id = NULL WHERE campaign_id = $1 AND id < $2 \
         AND state IN ('pending', 'rendered', 'leased')",
        "UPDATE batches SET rendered_ms = 1, body_key = 'bench' WHERE campaign_id = $1 \
         AND (n + 1) * 1000 <= $2 AND rendered_ms IS NULL",
    ] {
        sqlx::query(sql)
            .bind(id)
            .bind(cut)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query("DELETE FROM recipient_counts WHERE campaign_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO recipient_counts (campaign_id, state, n) \
         SELECT campaign_id, state, count(*) FROM recipients WHERE campaign_id = $1 GROUP BY campaign_id, state",
    )
    .bind(id)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE domain_counts SET open = 0 WHERE campaign_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let open: Vec<String> =
        sqlx::query_scalar("SELECT email_key FROM recipients WHERE campaign_id = $1 AND id >= $2")
            .bind(id)
            .bind(cut)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    let mut by_domain = std::collections::BTreeMap::<String, i64>::new();
    for k in &open {
        *by_domain
            .entry(k.rsplit('@').next().unwrap_or("").to_string())
            .or_default() += 1;
    }
    for (d, c) in by_domain {
        sqlx::query("UPDATE domain_counts SET open = $1 WHERE campaign_id = $2 AND domain = $3")
            .bind(c)
            .bind(id)
            .bind(d)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    for sql in [
        "UPDATE batches SET ready = (SELECT count(*) FROM recipients r WHERE r.campaign_id = batches.campaign_id \
         AND r.batch = batches.n AND r.state = 'rendered') WHERE campaign_id = $1",
        "UPDATE campaigns SET batches_rendered = (SELECT count(*) FROM batches b WHERE b.campaign_id = campaigns.id \
         AND b.rendered_ms IS NOT NULL), rendered_total = (SELECT coalesce(sum(b.size), 0) FROM batches b \
         WHERE b.campaign_id = campaigns.id AND b.rendered_ms IS NOT NULL) WHERE id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    if !url.starts_with("sqlite:") {
        // A real send leaves its dead row versions behind a few at a time, and autovacuum keeps
        // up; this one statement left 90 % of the table at once. Measure the steady state.
        sqlx::query("VACUUM (ANALYZE) recipients, batches")
            .execute(&mut db)
            .await
            .unwrap();
    }
    eprintln!(
        "  cursor moved to recipient {cut} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

async fn pg_schema(url: &str) -> (String, String) {
    sqlx::any::install_default_drivers();
    let name = format!("scale_{}", std::process::id());
    let mut admin = sqlx::AnyConnection::connect(url).await.expect("postgres");
    sqlx::query(&format!("CREATE SCHEMA {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{sep}options[search_path]={name}"), name)
}

async fn drop_schema(url: &str, name: &str) {
    let mut admin = sqlx::AnyConnection::connect(url).await.expect("postgres");
    let _ = sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
        .execute(&mut admin)
        .await;
}

fn report(label: &str, n: u64, r: &Run) {
    println!("{label}, {n} recipients:");
    println!(
        "  accepted in {:.1} s ({:.0} rows/s); peak RSS during the upload {:.0} MiB",
        r.accept.as_secs_f64(),
        n as f64 / r.accept.as_secs_f64(),
        r.rss
    );
    println!(
        "  lease  at start: {} ({} leases of {WANT})",
        summary(r.start.0.clone()),
        r.start.0.len()
    );
    println!("  report at start: {}", summary(r.start.1.clone()));
    println!(
        "  lease  at 90 %:  {} ({} leases of {WANT})",
        summary(r.deep.0.clone()),
        r.deep.0.len()
    );
    println!("  report at 90 %:  {}", summary(r.deep.1.clone()));
    println!("  GET progress:    {}", summary(r.progress.clone()));
    for (minute, sent) in &r.minutes {
        let at = chrono::DateTime::from_timestamp_millis(*minute)
            .map(|t| t.format("%H:%M").to_string())
            .unwrap_or_default();
        let verdict = match *sent {
            s if s > CAP as usize => "OVER THE CAP",
            s if s == CAP as usize => "the cap exactly",
            _ => "UNDER THE CAP",
        };
        println!("  sink, minute {at}: {sent:>5} of {CAP}  {verdict}");
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut results = Vec::new();
    for (n, minutes) in [(a.small, 0), (a.big, a.minutes)] {
        let dir = tempfile::tempdir().unwrap();
        let (label, r) = match &a.postgres {
            None => {
                let url = format!("sqlite://{}", dir.path().join("scale.db").display());
                ("SQLite", run(n, &url, dir.path(), minutes).await)
            }
            Some(pg) => {
                let (url, schema) = pg_schema(pg).await;
                let r = run(n, &url, dir.path(), minutes).await;
                drop_schema(pg, &schema).await;
                ("PostgreSQL", r)
            }
        };
        report(label, n, &r);
        results.push((n, r));
    }
    let p99 = |d: &[Duration]| {
        let mut d = d.to_vec();
        d.sort();
        pct(&d, 0.99)
    };
    let (small, big) = (&results[0].1, &results[1].1);
    println!(
        "lease p99 at {} / at {} (90 % sent): {:.2}",
        a.big,
        a.small,
        p99(&big.deep.0) / p99(&small.deep.0)
    );
}
