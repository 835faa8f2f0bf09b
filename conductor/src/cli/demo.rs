//! `conductor demo`: a newsletter to N generated recipients, sent through the embedded runtime while a
//! progress display shows rendering, sending and this minute's use of the cap.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sender::Clock;

use crate::config::{Config, ProviderKind};

use crate::domain::validate::{CampaignRequest, RecipientIn, Row};
use crate::startup::{Runtime, StartupError};
use crate::store::{Campaign, MinuteStats, Status};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("the demo campaign was refused: {0}")]
    Refused(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub campaign: Campaign,
    pub elapsed: Duration,
    /// From the campaign's creation until every batch was rendered.
    pub render_time: Duration,
    pub create_time: Duration,
    pub minutes: Vec<MinuteStats>,
}

const FIRST: [&str; 12] = [
    "Zoë",
    "José",
    "Björk",
    "Łukasz",
    "François",
    "Ingrid",
    "Søren",
    "Chloé",
    "Ñusta",
    "Mehmet",
    "Aoife",
    "Dvořák",
];
const LAST: [&str; 10] = [
    "Müller",
    "Núñez",
    "Guðmundsdóttir",
    "Żółć",
    "Lefèvre",
    "Østergård",
    "Ó Briain",
    "Yılmaz",
    "Smith",
    "渡辺",
];
const CITIES: [&str; 8] = [
    "Köln",
    "São Paulo",
    "Kraków",
    "Reykjavík",
    "Zürich",
    "Montréal",
    "東京",
    "Åarhus",
];
const TOPICS: [(&str, &str); 6] = [
    (
        "Ten years of open mail",
        "What a decade of running our own delivery taught us about reputation & pacing.",
    ),
    (
        "Inside the minute ledger",
        "Why we count per calendar minute, and how a crash can only ever under-send.",
    ),
    (
        "Straße, rue, улица: addresses",
        "Internationalised names in headers, and the encodings that carry them.",
    ),
    (
        "Spring release notes",
        "Faster rendering, smaller batches on disk, and a calmer dashboard.",
    ),
    (
        "Community spotlight: Kraków",
        "Meet the team that sends 4M newsletters a week from one small server.",
    ),
    (
        "Unsubscribe, the polite way",
        "One-click unsubscribe, what mailbox providers require, and why it helps you.",
    ),
];

/// Deterministic recipients: the same N always gives the same list.
pub fn recipients(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let first = FIRST[i % FIRST.len()];
            let last = LAST[(i / FIRST.len()) % LAST.len()];
            let articles: Vec<_> = (0..3)
                .map(|k| {
                    let (title, summary) = TOPICS[(i + k) % TOPICS.len()];
                    serde_json::json!({
                        "title": title,
                        "summary": summary,
                        "url": format!("https://news.example.com/articles/{}", (i + k) % TOPICS.len() + 1),
                    })
                })
                .collect();
            let data = serde_json::json!({
                "first_name": first,
                "city": CITIES[i % CITIES.len()],
                "member_since": 2015 + (i % 11),
                "articles": articles,
            });
            Row {
                at: format!("recipients[{i}]"),
                recipient: RecipientIn {
                    email: format!("reader{i:07}@example.com"),
                    name: Some(format!("{first} {last}")),
                    data: data.as_object().cloned(),
                },
            }
        })
        .collect()
}

pub fn request(n: usize) -> CampaignRequest {
    CampaignRequest {
        name: format!("Demo newsletter ({n} recipients)"),
        from: "\"The Conductor Gazette\" <gazette@example.com>".into(),
        reply_to: Some("Reader desk <readers@example.com>".into()),
        template: Some("newsletter".into()),
        ..Default::default()
    }
}

/// Runs the demo to the end (or until Ctrl-C) and returns what happened.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    n: usize,
    clock: Arc<dyn Clock>,
) -> Result<Summary, DemoError> {
    let provider = config.provider.describe();
    eprintln!(
        "demo: {n} recipients, cap {}/min, provider {provider}, store {}",
        config.governor.per_minute, config.store.url
    );
    let runtime = Runtime::start(config, config_path, clock.clone(), Default::default()).await?;
    let svc = runtime.service.clone();
    let started = Instant::now();
    let start_ms = clock.now_ms();
    let (created, _, _) = svc
        .create(request(n), recipients(n), None)
        .await
        .map_err(|p| DemoError::Refused(p.detail))?;
    let create_time = started.elapsed();
    let created_at = Instant::now();
    let id = created.id.clone();

    let progress = Progress::new(created.counts.total as u64);
    let mut render_time = None;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let campaign = loop {
        let c = svc.store.campaign(&id).await?;
        if render_time.is_none() && c.batches_rendered == c.batches {
            render_time = Some(created_at.elapsed());
        }
        let minute = svc
            .store
            .minutes(&crate::domain::scope::Scope::Global, clock.now_ms())
            .await?
            .last()
            .copied();
        progress.update(&c, minute, started.elapsed());
        if matches!(c.status, Status::Completed | Status::Cancelled) {
            break c;
        }
        if c.status == Status::Paused {
            progress.note(&format!(
                "paused: {}",
                c.status_reason.as_deref().unwrap_or("by request")
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = &mut ctrl_c => {
                progress.note("interrupted: the campaign stays in the store and continues at the next `serve` or `demo`");
                break c;
            }
        }
    };
    progress.finish();
    let elapsed = started.elapsed();
    let minutes = svc
        .store
        .minutes(&crate::domain::scope::Scope::Global, start_ms)
        .await?;
    runtime.shutdown().await;
    Ok(Summary {
        render_time: render_time.unwrap_or(elapsed),
        campaign,
        elapsed,
        create_time,
        minutes,
    })
}

struct Progress {
    multi: MultiProgress,
    rendered: ProgressBar,
    sent: ProgressBar,
    plain: bool,
    /// When the last plain line was printed, and what it said (lines repeat only on change).
    last_line: std::sync::Mutex<(Instant, String)>,
}

impl Progress {
    fn new(total: u64) -> Self {
        let plain = !std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if plain {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        let style =
            ProgressStyle::with_template("{prefix:>9} [{bar:40.cyan/blue}] {pos:>7}/{len:7} {msg}")
                .expect("valid template")
                .progress_chars("█▓░");
        let rendered = multi.add(
            ProgressBar::new(total)
                .with_style(style.clone())
                .with_prefix("rendered"),
        );
        let sent = multi.add(
            ProgressBar::new(total)
                .with_style(style)
                .with_prefix("done"),
        );
        Self {
            multi,
            rendered,
            sent,
            plain,
            last_line: std::sync::Mutex::new((Instant::now(), String::new())),
        }
    }

    fn update(&self, c: &Campaign, minute: Option<MinuteStats>, elapsed: Duration) {
        let k = &c.counts;
        let done = (k.total - k.pending) as u64;
        self.rendered.set_position(k.rendered as u64);
        self.sent.set_position(done);
        let rate = k.sent as f64 / elapsed.as_secs_f64().max(0.001);
        let this_minute = minute.map_or("-".to_string(), |m| format!("{}/{}", m.used, m.cap));
        let msg = format!(
            "sent {} · failed {} · unknown {} · this minute {this_minute} · {rate:.1}/s",
            k.sent, k.failed, k.unknown
        );
        self.sent.set_message(msg.clone());
        let mut last = self.last_line.lock().expect("progress poisoned");
        let finished = done == k.total as u64;
        if self.plain && last.1 != msg && (last.0.elapsed() >= Duration::from_secs(5) || finished) {
            *last = (Instant::now(), msg.clone());
            eprintln!(
                "[{:>6.1}s] rendered {}/{} · {msg}",
                elapsed.as_secs_f64(),
                k.rendered,
                k.total
            );
        }
    }

    fn note(&self, line: &str) {
        let _ = self.multi.println(line);
        if self.plain {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        self.rendered.finish();
        self.sent.finish();
    }
}

impl Summary {
    pub fn print(&self, config: &Config) {
        let c = &self.campaign;
        let k = &c.counts;
        println!();
        println!(
            "Campaign {} {} in {:.1} s",
            c.id,
            c.status.as_str(),
            self.elapsed.as_secs_f64()
        );
        println!(
            "  sent {} · failed {} · unknown {} · cancelled {} · duplicates removed {}",
            k.sent, k.failed, k.unknown, k.cancelled, c.duplicates_removed
        );
        println!(
            "  validated and stored in {:.2} s; rendered {} messages in {:.2} s ({:.0} messages/s)",
            self.create_time.as_secs_f64(),
            k.rendered,
            self.render_time.as_secs_f64(),
            k.rendered as f64 / self.render_time.as_secs_f64().max(0.001)
        );
        println!("  provider requests per calendar minute (cap in force):");
        for m in &self.minutes {
            let t = chrono::DateTime::from_timestamp_millis(m.minute_ms)
                .map(|t| t.format("%H:%M").to_string())
                .unwrap_or_default();
            println!("    {t}  {:>7} / {:<7} accepted {}", m.used, m.cap, m.sent);
        }
        if let Some(kib) = peak_rss_kib() {
            println!("  peak resident memory: {:.0} MiB", kib as f64 / 1024.0);
        }
        match config.provider.kind {
            ProviderKind::Outbox => println!(
                "  messages: {}/ (one .eml per recipient; open any in a mail client)",
                config.provider.outbox.dir.join(&c.id).display()
            ),
            _ => println!("  messages: sent through {}", config.provider.describe()),
        }
    }
}

/// The process's peak resident set (Linux `VmHWM`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
