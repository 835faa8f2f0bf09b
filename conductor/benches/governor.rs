//! Two campaigns under nested caps, counted at the receiving end.
//!
//! A large campaign (50,000 by default) starts; 30 s later a small one (2,000) joins. The global cap is
//! `per_minute = 1200` and `"example.org" = 300`; 40 % of each list is at example.org, so the domain
//! cap binds for those recipients while the rest of the global budget goes to the others. A
//! Mailgun-compatible sink on loopback records every arrival; the report prints, per calendar minute
//! and per scope (global, example.org, each campaign), what arrived against the cap, and when the small
//! campaign finished against its fair share (half the global cap while both run). The large campaign
//! is cancelled once the small one is done and at least `--minutes` (3) full minutes were sent.
//!
//! ```text
//! cargo bench -p conductor --bench governor                          # 50000 + 2000, 1200/min, example.org 300
//! cargo bench -p conductor --bench governor -- 50000 2000 1200 300 --minutes 3
//! ```

#[path = "../tests/it/sink.rs"]
#[allow(dead_code)]
mod sink;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conductor::config::Config;
use conductor::domain::validate::{self, CampaignRequest, RecipientIn};
use conductor::startup::Runtime;
use conductor::store::{Action, Status};
use sender::{Clock, SystemClock};

const DOMAIN: &str = "example.org";

fn campaign(name: &str, tag: &str, n: usize) -> (CampaignRequest, Vec<validate::Row>) {
    let req = CampaignRequest {
        name: name.into(),
        from: "News <news@mg.example.com>".into(),
        subject: Some("Hello {{name}}".into()),
        html: Some("<p>Hi {{name}}</p>".into()),
        ..Default::default()
    };
    let rows = (0..n)
        .map(|i| RecipientIn {
            // Two in five at the capped domain.
            email: if i % 5 < 2 {
                format!("{tag}{i}@{DOMAIN}")
            } else {
                format!("{tag}{i}@example.com")
            },
            name: Some(format!("R{i}")),
            data: None,
        })
        .collect();
    (req, validate::json_rows(rows))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let minutes_flag = args
        .iter()
        .position(|a| a == "--minutes")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(3);
    let numbers: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !args[i - 1].starts_with("--"))
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    let big_n = numbers.first().copied().unwrap_or(50_000);
    let small_n = numbers.get(1).copied().unwrap_or(2_000);
    let cap = numbers.get(2).copied().unwrap_or(1_200) as u32;
    let domain_cap = numbers.get(3).copied().unwrap_or(300) as u32;

    let (sink, base) = sink::Sink::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.store.url = format!("sqlite://{}", dir.path().join("bench.db").display());
    config.bodies.url = format!("file://{}", dir.path().join("bodies").display());
    config.governor.per_minute = cap;
    config.governor.domains.insert(DOMAIN.into(), domain_cap);
    sink::send_to(&mut config, &base);
    println!(
        "governor: {big_n} + {small_n} (30 s later) recipients, per_minute {cap}, {DOMAIN} {domain_cap}, 40 % of each list at {DOMAIN}"
    );

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let runtime = Runtime::start(config, None, clock.clone(), Default::default())
        .await
        .expect("runtime");
    let svc = runtime.service.clone();
    let started = Instant::now();
    let (req, rows) = campaign("big", "b", big_n);
    let big = svc
        .create(req, rows, None)
        .await
        .expect("big campaign")
        .0
        .id;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (req, rows) = campaign("small", "s", small_n);
    let small_created = clock.now_ms();
    let small = svc
        .create(req, rows, None)
        .await
        .expect("small campaign")
        .0
        .id;
    println!(
        "small campaign created {:.1} s after the big one",
        started.elapsed().as_secs_f64()
    );

    let first_ms = {
        let r = sink.received.lock().unwrap();
        r.iter().map(|r| r.at_ms).min().unwrap_or(small_created)
    };
    let mut small_done_ms = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = clock.now_ms();
        let s = svc.store.campaign(&small).await.expect("small");
        if small_done_ms.is_none() && s.status == Status::Completed {
            small_done_ms = Some(now);
            println!(
                "small campaign completed {:.1} s after it was created",
                (now - small_created) as f64 / 1000.0
            );
        }
        // Full minutes after the first partial one.
        let full_minutes =
            (sender::clock::minute_start(now) - sender::clock::minute_end(first_ms)) / 60_000;
        if small_done_ms.is_some() && full_minutes >= minutes_flag {
            break;
        }
        if started.elapsed() > Duration::from_secs(30 * 60) {
            println!("stopping after 30 minutes");
            break;
        }
    }
    svc.act(&big, Action::Cancel).await.expect("cancel");
    runtime.shutdown().await;
    report(
        &sink,
        (&big, &small),
        cap,
        domain_cap,
        small_created,
        small_done_ms,
        small_n,
    );
}

fn report(
    sink: &sink::Sink,
    (big, small): (&str, &str),
    cap: u32,
    domain_cap: u32,
    small_created: i64,
    small_done: Option<i64>,
    small_n: usize,
) {
    #[derive(Default, Clone, Copy)]
    struct Row {
        all: usize,
        domain: usize,
        big: usize,
        small: usize,
    }
    let mut per: BTreeMap<i64, Row> = BTreeMap::new();
    let received = sink.received.lock().unwrap().clone();
    for r in &received {
        let row = per.entry(r.at_ms.div_euclid(60_000) * 60_000).or_default();
        row.all += 1;
        row.domain += usize::from(
            r.to.contains(&format!("@{DOMAIN}>")) || r.to.ends_with(&format!("@{DOMAIN}")),
        );
        row.big += usize::from(r.campaign_id == big);
        row.small += usize::from(r.campaign_id == small);
    }
    println!("\nsink-side messages per calendar minute:");
    println!("  minute   global/{cap:<5}  {DOMAIN}/{domain_cap:<4}  big     small   verdict");
    let last = per.len().saturating_sub(1);
    let (mut over, mut short) = (0, 0);
    for (i, (m, row)) in per.iter().enumerate() {
        let t = chrono::DateTime::from_timestamp_millis(*m)
            .map(|t| t.format("%H:%M").to_string())
            .unwrap_or_default();
        let full = i != 0 && i != last;
        let g = 100.0 * row.all as f64 / f64::from(cap);
        let d = 100.0 * row.domain as f64 / f64::from(domain_cap);
        let verdict = if row.all > cap as usize || row.domain > domain_cap as usize {
            over += 1;
            "OVER CAP".to_string()
        } else if full && (g < 99.0 || d < 99.0) {
            short += 1;
            "below 99 % of a binding cap".to_string()
        } else if full {
            "full minute, ok".to_string()
        } else {
            "partial minute".to_string()
        };
        println!(
            "  {t}    {:>5} {g:>5.1} %   {:>4} {d:>5.1} %   {:>6}  {:>6}  {verdict}",
            row.all, row.domain, row.big, row.small
        );
    }
    // Recipient ids count from 0 in each campaign: a recipient is (campaign, id).
    let accepted: Vec<(&str, &str)> = received
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| (r.campaign_id.as_str(), r.recipient_id.as_str()))
        .collect();
    let distinct: std::collections::HashSet<_> = accepted.iter().collect();
    println!(
        "\n{} messages, {} accepted for {} distinct recipients (accepted twice: {}); minutes over a cap: {over}; full minutes under 99 % of a binding cap: {short}",
        received.len(),
        accepted.len(),
        distinct.len(),
        accepted.len() - distinct.len()
    );
    // While both run, the small campaign's fair share is half the global cap; of its example.org
    // recipients, half the domain cap.
    let share = f64::from(cap) / 2.0;
    let domain_share = f64::from(domain_cap) / 2.0;
    let at_domain = (small_n as f64 * 0.4).ceil();
    let fair_minutes =
        ((small_n as f64 - at_domain) / (share - domain_share)).max(at_domain / domain_share);
    match small_done {
        Some(done) => println!(
            "small campaign: {small_n} recipients finished in {:.1} min; its fair share (half of each cap while both run) allows {:.1} min",
            (done - small_created) as f64 / 60_000.0,
            fair_minutes
        ),
        None => println!("small campaign did not finish"),
    }
}
