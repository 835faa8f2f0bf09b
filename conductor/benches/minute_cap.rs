//! Sink-side sends per calendar minute under a cap, embedded or with separate sender processes.
//!
//! Runs a newsletter campaign against a Mailgun-compatible sink on loopback and prints, from the
//! *receiving* side, how many messages arrived in each calendar minute: no minute may exceed the cap,
//! and every full minute (not the first or last, which the campaign only partly covers) should reach
//! 99 % of it.
//!
//! ```text
//! cargo bench -p conductor --bench minute_cap                       # demo: 1500 recipients, 600/min
//! cargo bench -p conductor --bench minute_cap -- 2400 600 --senders 3
//! ```
//! With `--senders N` the conductor runs on PostgreSQL (`TEST_POSTGRES_URL`, default the local `test`
//! database, in a fresh schema) with N `sender` processes from `target/release/sender` (build it first:
//! `cargo build --release -p sender -p renderer`). With `--renderers R` as well, the whole production
//! topology runs: render jobs go out on SNS to R `renderer` processes, which write the bodies to S3,
//! all on the moto server `infra/dev-stack.sh` starts (`MOTO_URL`, default http://127.0.0.1:5055).
//!
//! ```text
//! cargo bench -p conductor --bench minute_cap -- 2400 600 --senders 3 --renderers 2
//! ```
//!
//! With `--faults` the sink misbehaves like a provider on a bad day: 30 % of requests are answered
//! 503, 10 % 429 with `Retry-After: 5`, 5 % only after 4 s. Every request counts against the cap
//! at the sink, refused or not; the campaign must still end with every recipient in a terminal state
//! and nobody accepted twice.
//!
//! ```text
//! cargo bench -p conductor --bench minute_cap -- 20000 6000 --faults
//! ```

#[path = "../tests/it/sink.rs"]
#[allow(dead_code)]
mod sink;
#[path = "support/topology.rs"]
mod topology;

use std::sync::Arc;
use std::time::{Duration, Instant};

use conductor::config::Config;
use sender::SystemClock;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| -> Option<usize> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
    };
    let senders = flag("--senders").unwrap_or(0);
    let renderers = flag("--renderers").unwrap_or(0);
    let numbers: Vec<u64> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !args[i - 1].starts_with("--"))
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    let recipients = numbers.first().copied().unwrap_or(1500) as usize;
    let cap = numbers.get(1).copied().unwrap_or(600) as u32;

    let faults = args.iter().any(|a| a == "--faults");
    let (sink, base) = sink::Sink::start().await;
    if faults {
        *sink.faults.lock().unwrap() = Some(sink::Faults {
            server_error: 0.30,
            throttled: 0.10,
            retry_after_s: 5,
            slow: 0.05,
            slow_ms: 4_000,
        });
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.store.url = format!("sqlite://{}", dir.path().join("bench.db").display());
    config.bodies.url = format!("file://{}", dir.path().join("bodies").display());
    config.campaigns.templates_dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../templates");
    config.governor.per_minute = cap;
    sink::send_to(&mut config, &base);

    let started = Instant::now();
    if senders == 0 {
        println!("embedded: {recipients} recipients, cap {cap}/min");
        let summary =
            conductor::cli::demo::run(config.clone(), None, recipients, Arc::new(SystemClock))
                .await
                .expect("demo run");
        summary.print(&config);
        let k = &summary.campaign.counts;
        // `pending` holds everything not yet final (in flight and deferred included).
        let waiting = k.pending;
        println!(
            "terminal: sent {} failed {} unknown {} suppressed {} cancelled {}; not terminal: {waiting}",
            k.sent, k.failed, k.unknown, k.suppressed, k.cancelled
        );
    } else {
        println!("distributed: {recipients} recipients, cap {cap}/min, {senders} sender processes, {renderers} renderer processes, PostgreSQL");
        let sink = topology::Sink {
            url: &base,
            key: sink::SINK_KEY,
        };
        topology::distributed(config, dir.path(), recipients, (senders, renderers), sink).await;
    }
    let elapsed = started.elapsed();
    report(&sink, cap, recipients, elapsed);
}

fn report(sink: &sink::Sink, cap: u32, recipients: usize, elapsed: Duration) {
    let per_minute = sink.per_minute();
    let received: usize = per_minute.values().sum();
    println!("\nsink-side messages per calendar minute (cap {cap}):");
    let last = per_minute.len().saturating_sub(1);
    let (mut over, mut short) = (0, 0);
    for (i, (minute, n)) in per_minute.iter().enumerate() {
        let t = chrono::DateTime::from_timestamp_millis(*minute)
            .map(|t| t.format("%H:%M").to_string())
            .unwrap_or_default();
        let full = i != 0 && i != last;
        let pct = 100.0 * *n as f64 / f64::from(cap);
        let verdict = if *n > cap as usize {
            over += 1;
            "OVER CAP"
        } else if full && pct < 99.0 {
            short += 1;
            "below 99 %"
        } else if full {
            "full minute, ok"
        } else {
            "partial minute"
        };
        println!("  {t}  {n:>7}  {pct:>6.1} %  {verdict}");
    }
    let mut ids: Vec<String> = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.recipient_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    let (accepted_n, accepted) = sink.accepted();
    let mut refused = std::collections::BTreeMap::<u16, usize>::new();
    for r in sink
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.status != 200)
    {
        *refused.entry(r.status).or_default() += 1;
    }
    if !refused.is_empty() {
        println!(
            "sink accepted {accepted_n} messages for {} distinct recipients (accepted twice: {}); refused by status: {refused:?}",
            accepted.len(),
            accepted_n - accepted.len()
        );
    }
    let (first, last) = {
        let r = sink.received.lock().unwrap();
        (
            r.iter().map(|r| r.at_ms).min().unwrap_or(0),
            r.iter().map(|r| r.at_ms).max().unwrap_or(0),
        )
    };
    println!(
        "received {received} messages for {} distinct recipients of {recipients}; minutes over the cap: {over}; full minutes under 99 %: {short}",
        ids.len()
    );
    println!(
        "first to last arrival {:.1} s ({:.0} messages/s at the sink); whole run {:.1} s",
        (last - first) as f64 / 1000.0,
        received as f64 / ((last - first) as f64 / 1000.0).max(0.001),
        elapsed.as_secs_f64()
    );
}
