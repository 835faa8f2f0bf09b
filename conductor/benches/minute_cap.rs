//! Sink-side sends per calendar minute under a cap.
//!
//! Runs the demo (`demo --recipients 1500 --per-minute 600` by default) against a Mailgun-compatible
//! sink on loopback and prints, from the *receiving* side, how many messages arrived in each calendar
//! minute: no minute may exceed the cap, and every full minute (not the first or last, which the
//! campaign only partly covers) should reach 99 % of it.
//!
//! `cargo bench -p conductor --bench minute_cap [-- RECIPIENTS PER_MINUTE]`

#[path = "../tests/it/sink.rs"]
#[allow(dead_code)]
mod sink;

use std::sync::Arc;

use conductor::config::{Config, ProviderKind};
use sender::SystemClock;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let recipients: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1500);
    let cap: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(600);

    let (sink, base) = sink::Sink::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.store.url = format!("sqlite://{}", dir.path().join("bench.db").display());
    config.bodies.url = format!("file://{}", dir.path().join("bodies").display());
    config.campaigns.templates_dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../templates");
    config.governor.per_minute = cap;
    config.provider.kind = ProviderKind::Mailgun;
    config.provider.mailgun.base_url = base;
    config.provider.mailgun.domain = "mg.example.com".into();
    config.provider.mailgun.api_key = Some(sink::SINK_KEY.into());

    let summary = conductor::demo::run(config.clone(), None, recipients, Arc::new(SystemClock))
        .await
        .expect("demo run");
    summary.print(&config);

    let per_minute = sink.per_minute();
    let received: usize = per_minute.values().sum();
    println!("\nsink-side messages per calendar minute (cap {cap}):");
    let last = per_minute.len().saturating_sub(1);
    let mut over = 0;
    let mut short = 0;
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
        println!("  {t}  {n:>6}  {pct:>6.1} %  {verdict}");
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
    println!(
        "received {received} messages for {} distinct recipients of {recipients}; minutes over the cap: {over}; full minutes under 99 %: {short}",
        ids.len()
    );
}
