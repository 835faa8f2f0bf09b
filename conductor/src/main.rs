use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use conductor::config::Config;
use conductor::startup::Application;
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

/// Many threads allocate and free message-sized buffers; the system allocator keeps an arena per
/// thread and holds on to their memory, mimalloc gives it back.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Demo { .. });
    renderer::process::run(if quiet { "warn" } else { "info" }, run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = Config::load(config.as_deref(), std::env::vars())?;
            let app = Application::build(cfg, config, Arc::new(SystemClock)).await?;
            tracing::info!(address = %app.local_addr(), "conductor serving");
            app.run_until(async {
                renderer::process::shutdown_signal().await;
                tracing::info!("shutting down");
            })
            .await
            .context("server failed")?;
        }
        Command::Migrate { config } => {
            let cfg = Config::load(config.as_deref(), std::env::vars())?;
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
            if let Some(cap) = per_minute {
                cfg.governor.per_minute = cap;
            }
            cfg.validate()?;
            let summary =
                conductor::demo::run(cfg.clone(), None, recipients, Arc::new(SystemClock)).await?;
            summary.print(&cfg);
        }
    }
    Ok(())
}
