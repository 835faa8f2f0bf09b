use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use conductor::config::Config;
use conductor::startup::Application;
use renderer::deploy::process::LogConfig;
use sender::SystemClock;

/// Campaign email delivery orchestrator.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the REST API with the embedded renderer and sender workers.
    Serve {
        /// conductor.toml; every key is optional.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create or update the store's schema (`serve` does this too on start).
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Campaigns on a running server, through its REST API.
    Campaign {
        /// The server's base URL.
        #[arg(
            long,
            env = "CONDUCTOR_URL",
            default_value = "http://127.0.0.1:8080",
            global = true
        )]
        server: String,
        /// A bearer token, when the server has `[server] api_tokens`.
        #[arg(long, env = "CONDUCTOR_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: CampaignCommand,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Send a demo newsletter to generated recipients and show the progress.
    Demo {
        #[arg(long, default_value_t = 2000)]
        recipients: usize,
        /// Messages per calendar minute (overrides the config).
        #[arg(long)]
        per_minute: Option<u32>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CampaignCommand {
    /// Create a campaign from a template folder (subject.hbs, html.hbs, text.hbs) and a CSV list.
    Create {
        #[arg(long)]
        template: PathBuf,
        /// CSV with a header row; `email` required, `name` optional, other columns become fields.
        #[arg(long)]
        recipients: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        name: Option<String>,
        /// The campaign's own cap, messages per minute.
        #[arg(long)]
        per_minute: Option<u32>,
        /// Follow the send until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// One line per campaign: id, status, sent, failed, unknown, total, name.
    List,
    /// The campaign as JSON: counts per state, limits, ETA while running.
    Show { id: String },
    /// Stop handing out its recipients; leases in progress finish.
    Pause { id: String },
    /// Hand out its recipients again.
    Resume { id: String },
    /// End it: recipients not yet sent never will be.
    Cancel { id: String },
    /// Follow a send with progress bars; the exit status says how it ended (0 all sent,
    /// 3 completed with failures or sends in doubt, 4 paused, 5 cancelled, 1 an error).
    Watch { id: String },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random API token and the digest to list in `[server] api_tokens`.
    New,
}

/// Many threads allocate and free message-sized buffers; the system allocator keeps an arena per
/// thread and holds on to their memory, mimalloc gives it back.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log filter for commands whose output is for a person at a terminal.
const QUIET: &str = "warn";

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let ending = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let code = renderer::deploy::process::run(run(cli, ending.clone()));
    match ending.load(std::sync::atomic::Ordering::SeqCst) {
        0 => code,
        n => std::process::ExitCode::from(n),
    }
}

async fn run(cli: Cli, ending: Arc<std::sync::atomic::AtomicU8>) -> anyhow::Result<()> {
    match cli.command {
        Command::Campaign {
            server,
            token,
            command,
        } => {
            LogConfig::default().install(QUIET)?;
            let end = campaign(conductor::cli::Client::new(&server, token), command).await?;
            if let Some(e) = end {
                ending.store(e as u8, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Command::Token {
            command: TokenCommand::New,
        } => {
            LogConfig::default().install(QUIET)?;
            let token = format!(
                "cnd_{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            println!("token:  {token}");
            println!(
                "config: [server] api_tokens = [\"{}\"]",
                conductor::http::auth::digest(&token)
            );
        }
        Command::Serve { config } => {
            let cfg = Config::load(config.as_deref(), std::env::vars())?;
            cfg.log.install("info")?;
            let stop = renderer::deploy::process::shutdown_signal();
            let app = Application::build(cfg, config, Arc::new(SystemClock)).await?;
            tracing::info!(address = %app.local_addr(), "conductor serving");
            app.run_until(async {
                stop.await;
                tracing::info!("shutting down");
            })
            .await
            .context("server failed")?;
        }
        Command::Migrate { config } => {
            let cfg = Config::load(config.as_deref(), std::env::vars())?;
            cfg.log.install("info")?;
            conductor::store::SqlStore::open(&cfg.store_url()?).await?;
            println!("store schema is up to date");
        }
        Command::Demo {
            recipients,
            per_minute,
            config,
        } => {
            anyhow::ensure!(recipients > 0, "--recipients must be at least 1");
            let mut cfg = Config::load(config.as_deref(), std::env::vars())?;
            // The demo's own lines are the progress; logs only for what goes wrong.
            cfg.log.install(QUIET)?;
            if let Some(cap) = per_minute {
                cfg.governor.per_minute = cap;
            }
            cfg.validate()?;
            let summary =
                conductor::cli::demo::run(cfg.clone(), None, recipients, Arc::new(SystemClock))
                    .await?;
            summary.print(&cfg);
        }
    }
    Ok(())
}

async fn campaign(
    client: conductor::cli::Client,
    command: CampaignCommand,
) -> anyhow::Result<Option<conductor::cli::Ending>> {
    let show =
        |v: &serde_json::Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match command {
        CampaignCommand::Create {
            template,
            recipients,
            from,
            name,
            per_minute,
            watch,
        } => {
            let c = client
                .create(&template, &recipients, &from, name.as_deref(), per_minute)
                .await?;
            println!("created {}: {} recipients", c.id, c.counts.total);
            if watch {
                return Ok(Some(follow(&client, &c.id).await?));
            }
        }
        CampaignCommand::List => {
            for c in client.list().await? {
                println!("{}", conductor::cli::line(&c));
            }
        }
        CampaignCommand::Show { id } => show(&client.show(&id).await?),
        CampaignCommand::Pause { id } => show(&client.act(&id, "pause").await?),
        CampaignCommand::Resume { id } => show(&client.act(&id, "resume").await?),
        CampaignCommand::Cancel { id } => show(&client.act(&id, "cancel").await?),
        CampaignCommand::Watch { id } => return Ok(Some(follow(&client, &id).await?)),
    }
    Ok(None)
}

/// Follows a send: bars on a terminal, else plain lines (bars are not drawn there).
async fn follow(
    client: &conductor::cli::Client,
    id: &str,
) -> anyhow::Result<conductor::cli::Ending> {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        watch_bars(client, id).await
    } else {
        watch_lines(client, id).await
    }
}

/// A line every few seconds and on each change of status, for a log or a CI job.
async fn watch_lines(
    client: &conductor::cli::Client,
    id: &str,
) -> anyhow::Result<conductor::cli::Ending> {
    let mut printed: Option<(std::time::Instant, conductor::store::Status)> = None;
    let end = client
        .watch(id, |f| {
            let status = f.status;
            let due = printed.as_ref().is_none_or(|(at, s)| {
                *s != status || at.elapsed() >= std::time::Duration::from_secs(5)
            });
            if due {
                println!("{}", conductor::cli::progress_line(f));
                printed = Some((std::time::Instant::now(), status));
            }
        })
        .await?;
    Ok(end)
}

/// Progress bars for rendered, sent and failed-or-in-doubt, with the rate and ETA.
async fn watch_bars(
    client: &conductor::cli::Client,
    id: &str,
) -> anyhow::Result<conductor::cli::Ending> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} {msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    let bar = |name: &str| {
        let b = bars.add(ProgressBar::new(0));
        b.set_style(style.clone());
        b.set_prefix(name.to_string());
        b
    };
    let (rendered, sent, trouble) = (bar("rendered"), bar("sent"), bar("failed"));
    let mut last_status = None;
    let end = client
        .watch(id, |f| {
            let k = &f.counts;
            let n = |v: i64| v.max(0) as u64;
            for b in [&rendered, &sent, &trouble] {
                b.set_length(n(k.total));
            }
            rendered.set_position(n(k.rendered));
            sent.set_position(n(k.sent));
            trouble.set_position(n(k.failed + k.unknown));
            let (used, cap) = f.minute.map_or((0, 0), |m| (m.used, m.cap));
            sent.set_message(format!(
                "{}/min · this minute {used}/{cap} · ETA {}",
                f.rate_per_minute,
                f.eta.as_deref().unwrap_or("—"),
            ));
            trouble.set_message(format!("{} unknown", k.unknown));
            if last_status != Some(f.status) {
                let reason = f
                    .status_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let _ = bars.println(format!("{}{reason}", f.status.as_str()));
                last_status = Some(f.status);
            }
        })
        .await?;
    for b in [&rendered, &sent, &trouble] {
        b.finish();
    }
    Ok(end)
}
