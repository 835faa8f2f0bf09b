//! `sender`: leases work from a conductor over HTTP and sends it through the configured provider,
//! paced on the slots the conductor grants. Reads `[provider]`, `[sender]` and `[bodies]` from the
//! same config file as the conductor; the workers' secret from `CONDUCTOR__WORKERS__SECRET`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use renderer::body_store::BodiesConfig;
use renderer::deploy::config::WorkerSecret;
use sender::config::{ProviderConfig, SenderSettings};
use sender::remote::HttpWorkSource;
use sender::{Sender, SystemClock};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Sends leased campaign messages through the mail provider"
)]
struct Args {
    /// The conductor's base URL, e.g. http://10.0.0.5:8080
    #[arg(long)]
    conductor: String,
    /// The deployment's conductor.toml (only [provider], [sender], [bodies], [safety], [workers] and [log] are read).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The sections of conductor.toml a sender reads; the others belong to the conductor.
#[derive(Default, Deserialize)]
#[serde(default)]
struct FileConfig {
    provider: ProviderConfig,
    sender: SenderSettings,
    bodies: BodiesConfig,
    workers: WorkerSecret,
    safety: sender::safety::Safety,
    log: renderer::deploy::process::LogConfig,
}

impl renderer::deploy::config::Secrets for FileConfig {
    fn secrets() -> Vec<renderer::deploy::config::SecretPath> {
        let mut s = sender::config::PROVIDER_SECRETS.to_vec();
        s.push(renderer::deploy::config::WORKERS_SECRET);
        s.push(renderer::deploy::aws::BODIES_S3_SECRET);
        s
    }
}

/// Many threads allocate and free message-sized buffers; the system allocator keeps an arena per
/// thread and holds on to their memory, mimalloc gives it back.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    renderer::deploy::process::run(run(Args::parse()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let cfg: FileConfig = renderer::deploy::config::load(args.config.as_deref(), std::env::vars())?;
    cfg.log.install("info")?;
    cfg.provider.validate()?;
    cfg.sender.validate()?;
    cfg.safety.check()?;
    let secret = cfg.workers.require()?;
    let bodies = cfg.bodies.open().await?;
    let clock = Arc::new(SystemClock);
    let source = Arc::new(HttpWorkSource::new(&args.conductor, secret, clock.clone())?);
    let stop = CancellationToken::new();
    // [safety] is read again every few seconds: turning the sandbox on protects the next request
    // here too, not only the conductor's next lease.
    let safety = Arc::new(std::sync::RwLock::new(cfg.safety.clone()));
    if let Some(path) = args.config.clone() {
        tokio::spawn(watch_safety(path, safety.clone(), stop.clone()));
    }
    let live = safety.clone();
    let provider = sender::safety::Safety::guard_live(
        cfg.provider.build(clock.clone())?,
        Arc::new(move || live.read().expect("safety lock poisoned").clone()),
    );
    let sender = Arc::new(Sender::new(
        source,
        bodies,
        provider,
        clock,
        cfg.sender.sender_config(&cfg.provider),
        stop.clone(),
    ));
    let signal = renderer::deploy::process::shutdown_signal();
    tracing::info!(conductor = %args.conductor, provider = %cfg.provider.describe(), "sender started");
    let worker = tokio::spawn(sender.run());
    signal.await;
    // Leases in progress hand back what they have not started and report the rest.
    tracing::info!("stopping");
    stop.cancel();
    worker.await.context("sender task")?;
    Ok(())
}

/// Re-reads `path` every two seconds and takes its `[safety]` when that is valid; a file that does
/// not load keeps the settings in force (and says so once).
async fn watch_safety(
    path: PathBuf,
    safety: Arc<std::sync::RwLock<sender::safety::Safety>>,
    stop: CancellationToken,
) {
    let mut refused = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = stop.cancelled() => return,
        }
        let loaded = renderer::deploy::config::load::<FileConfig>(Some(&path), std::env::vars())
            .map_err(|e| e.to_string())
            .and_then(|c| {
                c.safety
                    .check()
                    .map(|()| c.safety)
                    .map_err(|e| e.to_string())
            });
        match loaded {
            Ok(new) => {
                refused = None;
                let mut current = safety.write().expect("safety lock poisoned");
                if *current != new {
                    tracing::info!(
                        sandbox = new.sandbox,
                        "[safety] changed; applies to the next send"
                    );
                    *current = new;
                }
            }
            Err(e) if refused.as_ref() != Some(&e) => {
                tracing::error!(error = %e, "config change refused; keeping the [safety] in force");
                refused = Some(e);
            }
            Err(_) => {}
        }
    }
}
