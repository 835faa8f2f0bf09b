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

use std::sync::Arc;
use std::time::{Duration, Instant};

use conductor::config::Config;
use conductor::store::Status;
use sender::SystemClock;
use sqlx::Connection;

const SECRET: &str = "bench-workers-secret-0123456789";

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
        let summary = conductor::demo::run(config.clone(), None, recipients, Arc::new(SystemClock))
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
        distributed(config, dir.path(), recipients, (senders, renderers), &base).await;
    }
    let elapsed = started.elapsed();
    report(&sink, cap, recipients, elapsed);
}

async fn distributed(
    mut config: Config,
    dir: &std::path::Path,
    recipients: usize,
    (senders, renderers): (usize, usize),
    sink_url: &str,
) {
    let base = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(&base)
        .await
        .expect("PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    config.store.url = format!("{base}{sep}options[search_path]={schema}");
    config.server.listen = "127.0.0.1:0".into();
    config.workers.embedded_sender = false;
    config.workers.secret = Some(SECRET.into());

    let mut shared = format!(
        "[provider]\nkind = \"mailgun\"\n[provider.mailgun]\nbase_url = \"{sink_url}\"\ndomain = \"mg.example.com\"\n"
    );
    if renderers == 0 {
        shared.push_str(&format!("[bodies]\nurl = \"{}\"\n", config.bodies.url));
    } else {
        shared.push_str(&on_moto(&mut config).await);
    }
    let file = dir.join("conductor.toml");
    std::fs::write(&file, shared).unwrap();
    let app = conductor::startup::Application::build(config, None, Arc::new(SystemClock))
        .await
        .expect("conductor");
    let url = format!("http://{}", app.local_addr());
    let svc = app.service();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));
    let spawn = |name: &str| {
        let binary = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/release")
            .join(name);
        assert!(
            binary.exists(),
            "build it first: cargo build --release -p sender -p renderer"
        );
        tokio::process::Command::new(&binary)
            .args(["--conductor", &url, "--config", file.to_str().unwrap()])
            .env("CONDUCTOR__WORKERS__SECRET", SECRET)
            .env("CONDUCTOR__PROVIDER__MAILGUN__API_KEY", sink::SINK_KEY)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("worker process")
    };
    let mut children: Vec<_> = (0..renderers)
        .map(|_| spawn("renderer"))
        .chain((0..senders).map(|_| spawn("sender")))
        .collect();
    if renderers > 0 {
        // Let the renderers subscribe before the first doorbell rings.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (created, _, _) = svc
        .create(
            conductor::demo::request(recipients),
            conductor::demo::recipients(recipients),
            None,
        )
        .await
        .expect("campaign");
    let mut last = Instant::now();
    loop {
        let c = svc.store.campaign(&created.id).await.unwrap();
        if last.elapsed() > Duration::from_secs(10) {
            last = Instant::now();
            println!("  sent {} / {}", c.counts.sent, c.counts.total);
        }
        if matches!(c.status, Status::Completed | Status::Cancelled) {
            println!(
                "  campaign {}: sent {} failed {} unknown {}",
                c.status.as_str(),
                c.counts.sent,
                c.counts.failed,
                c.counts.unknown
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for child in &mut children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Points `config` at a fresh bucket and render topic on moto; returns the workers' config sections.
async fn on_moto(config: &mut Config) -> String {
    let moto = std::env::var("MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5055".into());
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let region = "us-east-1";
    let shared = renderer::aws::sdk_config(Some(region), Some(&moto)).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    );
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("moto is not running: start it with infra/dev-stack.sh");
    let topic = aws_sdk_sns::Client::new(&shared)
        .create_topic()
        .name(&name)
        .send()
        .await
        .expect("SNS topic")
        .topic_arn()
        .unwrap()
        .to_string();
    let sections = format!(
        "[bodies]\nurl = \"s3://{name}/bodies\"\n\
         [bodies.s3]\nendpoint = \"{moto}\"\nregion = \"{region}\"\nforce_path_style = true\n\
         [dispatch]\nmode = \"sns\"\n[dispatch.sns]\ntopic_arn = \"{topic}\"\nendpoint = \"{moto}\"\n\
         [renderer]\nlisten = \"127.0.0.1:0\"\nverify_signatures = false\n\
         public_url = \"http://127.0.0.1:{{port}}/sns\"\n"
    );
    let parsed: Config = sender::config::from_toml(&sections, []).expect("bench config");
    config.bodies = parsed.bodies;
    config.dispatch = parsed.dispatch;
    sections
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
