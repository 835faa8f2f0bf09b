//! The progress endpoint under load while a campaign sends, and what that load costs the send.
//!
//! One conductor (embedded default: SQLite, in-process renderer and sender) serves on loopback and
//! sends to a Mailgun-compatible sink, also on loopback. Campaigns of the same size run one after
//! another, alternately *quiet* and *loaded* (ABBA order, so drift over the run does not favour
//! either): during a loaded one, a generator on its own thread and runtime asks
//! `GET /v1/campaigns/{id}` at a fixed rate — open loop, each request due at its slot whether or not
//! the last one came back, and its latency counted from that slot, so a server that stalls cannot
//! hide it by slowing the generator (coordinated omission). Optionally `--sse N` event-stream
//! clients stay connected throughout a loaded campaign as well.
//!
//! The send rate is counted at the sink: arrivals of that campaign, first to last. The cap is set
//! high (`--cap`, per minute) so that the machine, not the ledger, bounds the rate; with a binding
//! cap both kinds of phase would only show the cap.
//!
//! ```text
//! cargo bench -p conductor --bench progress_load                     # 20000 per campaign, 1000 req/s, 2 rounds
//! cargo bench -p conductor --bench progress_load -- 20000 --rps 1000 --rounds 2 --cap 600000 --sse 50
//! ```

#[path = "../tests/it/sink.rs"]
#[allow(dead_code)]
mod sink;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conductor::config::Config;
use conductor::domain::validate::{self, CampaignRequest, RecipientIn};
use conductor::startup::Application;
use conductor::store::Status;
use sender::SystemClock;

/// Requests the generator lets wait at once before it counts further slots as not made.
const MAX_IN_FLIGHT: usize = 4_000;

struct Args {
    recipients: usize,
    rps: u32,
    rounds: usize,
    cap: u32,
    sse: usize,
}

fn args() -> Args {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| -> Option<u64> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
    };
    let recipients = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !args[i - 1].starts_with("--"))
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(20_000);
    Args {
        recipients,
        rps: flag("--rps").unwrap_or(1_000) as u32,
        rounds: flag("--rounds").unwrap_or(2) as usize,
        cap: flag("--cap").unwrap_or(600_000) as u32,
        sse: flag("--sse").unwrap_or(0) as usize,
    }
}

fn campaign(tag: &str, n: usize) -> (CampaignRequest, Vec<validate::Row>) {
    let req = CampaignRequest {
        name: format!("load-{tag}"),
        from: "News <news@mg.example.com>".into(),
        subject: Some("Winter news for {{name}}".into()),
        html: Some("<h1>Hello {{name}}</h1><p>Our winter selection, picked for you.</p>".into()),
        text: Some("Hello {{name}}, our winter selection, picked for you.".into()),
        ..Default::default()
    };
    let rows = (0..n)
        .map(|i| RecipientIn {
            email: format!("{tag}-{i}@example.com"),
            name: Some(format!("Reader {i}")),
            data: None,
        })
        .collect();
    (req, validate::json_rows(rows))
}

/// What the generator saw: latencies in microseconds of the requests answered 200, and the rest.
#[derive(Default)]
struct LoadReport {
    latencies_us: Vec<u64>,
    not_ok: usize,
    errors: usize,
    skipped: usize,
    elapsed: Duration,
}

/// A runtime for a load thread, apart from the server's, so the load does not queue behind it.
fn own_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("load runtime")
}

/// Asks `url` `rps` times a second until `stop`, on a thread and runtime of its own.
fn generate(url: String, rps: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<LoadReport> {
    std::thread::spawn(move || {
        own_runtime().block_on(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1_024)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<(u64, u16)>>();
            let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let period = Duration::from_secs(1) / rps;
            let start = tokio::time::Instant::now();
            let mut report = LoadReport::default();
            let mut k: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                let due = start + period * k;
                k += 1;
                tokio::time::sleep_until(due).await;
                if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                    report.skipped += 1;
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (client, url, tx, in_flight) =
                    (client.clone(), url.clone(), tx.clone(), in_flight.clone());
                tokio::spawn(async move {
                    let answer = match client.get(&url).send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            r.bytes().await.ok().map(|_| status)
                        }
                        Err(_) => None,
                    };
                    let took = due.elapsed().as_micros() as u64;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let _ = tx.send(answer.map(|s| (took, s)));
                });
            }
            report.elapsed = start.elapsed();
            drop(tx);
            while let Some(answer) = rx.recv().await {
                match answer {
                    Some((us, 200)) => report.latencies_us.push(us),
                    Some(_) => report.not_ok += 1,
                    None => report.errors += 1,
                }
            }
            report
        })
    })
}

/// `n` event-stream clients reading until `stop`; returns how many frames they got in all.
fn watchers(url: String, n: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        own_runtime().block_on(async move {
            let client = reqwest::Client::new();
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
                    tokio::spawn(async move {
                        let mut frames = 0;
                        let Ok(mut r) = client.get(&url).send().await else {
                            return 0;
                        };
                        while !stop.load(Ordering::Relaxed) {
                            match tokio::time::timeout(Duration::from_millis(500), r.chunk()).await
                            {
                                Ok(Ok(Some(chunk))) => {
                                    frames += chunk.windows(7).filter(|w| w == b"\nevent:").count()
                                        + usize::from(chunk.starts_with(b"event:"));
                                }
                                Ok(_) => break,
                                Err(_) => {}
                            }
                        }
                        frames
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap_or(0);
            }
            total
        })
    })
}

struct Phase {
    loaded: bool,
    /// Messages per second at the sink, first arrival to last.
    rate: f64,
    /// Seconds from creation to the last arrival at the sink.
    wall: f64,
    load: Option<LoadReport>,
    frames: usize,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let a = args();
    let (sink, sink_url) = sink::Sink::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.store.url = format!("sqlite://{}", dir.path().join("bench.db").display());
    config.bodies.url = format!("file://{}", dir.path().join("bodies").display());
    config.governor.per_minute = a.cap;
    sink::send_to(&mut config, &sink_url);

    let app = Application::build(config, None, Arc::new(SystemClock))
        .await
        .expect("application");
    let base = format!("http://{}", app.local_addr());
    let svc = app.service();
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    println!(
        "progress_load: {} recipients per campaign, cap {}/min, {} rounds of quiet + loaded ({} req/s to GET /v1/campaigns/{{id}}{}), SQLite, embedded workers, {} cores",
        a.recipients,
        a.cap,
        a.rounds,
        a.rps,
        if a.sse > 0 { format!(", {} event-stream clients", a.sse) } else { String::new() },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let mut phases = Vec::new();
    for round in 0..a.rounds {
        // ABBA: quiet, loaded, loaded, quiet, …
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for loaded in order {
            let tag = format!("r{round}{}", if loaded { "l" } else { "q" });
            let (req, rows) = campaign(&tag, a.recipients);
            let created = Instant::now();
            let id = svc.create(req, rows, None).await.expect("campaign").0.id;
            let stop = Arc::new(AtomicBool::new(false));
            let load =
                loaded.then(|| generate(format!("{base}/v1/campaigns/{id}"), a.rps, stop.clone()));
            let sse = (loaded && a.sse > 0).then(|| {
                watchers(
                    format!("{base}/v1/campaigns/{id}/events"),
                    a.sse,
                    stop.clone(),
                )
            });
            // Watched at the sink: the harness itself must not add store reads to either phase.
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let arrived = sink
                    .received
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take_while(|r| r.campaign_id == id)
                    .count();
                if arrived >= a.recipients {
                    break;
                }
                if created.elapsed() > Duration::from_secs(20 * 60) {
                    panic!(
                        "{tag}: {arrived} of {} arrived after 20 minutes",
                        a.recipients
                    );
                }
            }
            let wall = created.elapsed().as_secs_f64();
            loop {
                let c = svc.store.campaign(&id).await.expect("campaign");
                if c.status != Status::Running {
                    assert_eq!(
                        c.counts.sent as usize, a.recipients,
                        "{tag}: {:?}",
                        c.counts
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            stop.store(true, Ordering::Relaxed);
            let load = load.map(|h| h.join().expect("generator"));
            let frames = sse.map_or(0, |h| h.join().expect("watchers"));
            let arrivals: Vec<i64> = sink
                .received
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.campaign_id == id)
                .map(|r| r.at_ms)
                .collect();
            let first = arrivals.iter().min().copied().unwrap_or(0);
            let last = arrivals.iter().max().copied().unwrap_or(0);
            let rate =
                (arrivals.len().saturating_sub(1)) as f64 / ((last - first).max(1) as f64 / 1000.0);
            let phase = Phase {
                loaded,
                rate,
                wall,
                load,
                frames,
            };
            print_phase(&tag, &phase, a.sse);
            phases.push(phase);
            // Between campaigns: let the last reports and the watcher's idle stop settle.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let _ = stop_server.send(());
    let _ = server.await;
    summary(&phases, a.cap, a.rps);
}

fn print_phase(tag: &str, p: &Phase, sse: usize) {
    print!(
        "  {tag:<5} {:<6}  send {:>7.1} msg/s  ({:.1} s created→last arrival)",
        if p.loaded { "loaded" } else { "quiet" },
        p.rate,
        p.wall
    );
    if let Some(l) = &p.load {
        let mut sorted = l.latencies_us.clone();
        sorted.sort_unstable();
        let made = sorted.len() + l.not_ok + l.errors;
        print!(
            "  |  GET {made} in {:.1} s = {:.0} req/s, p50 {:.2} ms p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; non-200 {}, failed {}, not made {}",
            l.elapsed.as_secs_f64(),
            made as f64 / l.elapsed.as_secs_f64(),
            percentile(&sorted, 50.0),
            percentile(&sorted, 90.0),
            percentile(&sorted, 99.0),
            percentile(&sorted, 99.9),
            percentile(&sorted, 100.0),
            l.not_ok,
            l.errors,
            l.skipped,
        );
        if sse > 0 {
            print!("; {} event frames to {sse} clients", p.frames);
        }
    }
    println!();
}

fn summary(phases: &[Phase], cap: u32, rps: u32) {
    let mean = |loaded: bool| {
        let r: Vec<f64> = phases
            .iter()
            .filter(|p| p.loaded == loaded)
            .map(|p| p.rate)
            .collect();
        r.iter().sum::<f64>() / r.len().max(1) as f64
    };
    let (quiet, loaded) = (mean(false), mean(true));
    let mut all: Vec<u64> = phases
        .iter()
        .filter_map(|p| p.load.as_ref())
        .flat_map(|l| l.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    println!("\nsummary:");
    println!(
        "  GET /v1/campaigns/{{id}} at {rps} req/s during sends: {} answered 200, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        all.len(),
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        percentile(&all, 99.9)
    );
    println!(
        "  send rate: quiet {quiet:.1} msg/s, loaded {loaded:.1} msg/s, loaded/quiet = {:.3}",
        loaded / quiet
    );
    let cap_per_s = f64::from(cap) / 60.0;
    if quiet > 0.9 * cap_per_s {
        println!(
            "  note: the quiet rate is within 10 % of the cap ({cap_per_s:.0}/s): the cap, not the machine, bounded it"
        );
    }
}
