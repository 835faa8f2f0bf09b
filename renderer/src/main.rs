//! `renderer`: receives render jobs from SNS at `POST /sns`, renders each batch, writes it to the
//! body store and reports to the conductor. Reads `[renderer]`, `[dispatch]`, `[bodies]` and
//! `[workers]` from the deployment's config file; the workers' secret from `CONDUCTOR__WORKERS__SECRET`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use renderer::body_store::BodiesConfig;
use renderer::deploy::aws::DispatchConfig;
use renderer::deploy::config::WorkerSecret;
use renderer::deploy::remote::HttpRenderSource;
use renderer::service::{RendererApp, RendererSettings};
use renderer::sns::HttpsCertFetcher;
use renderer::Renderer;
use serde::Deserialize;

#[derive(Parser)]
#[command(version, about = "Renders campaign batches delivered by SNS")]
struct Args {
    /// The conductor's base URL, e.g. http://10.0.0.5:8080
    #[arg(long)]
    conductor: String,
    /// The deployment's conductor.toml (only [renderer], [dispatch], [bodies], [workers] and [log] are read).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The sections of conductor.toml a renderer reads; the others belong to its neighbours.
#[derive(Default, Deserialize)]
#[serde(default)]
struct FileConfig {
    renderer: RendererSettings,
    dispatch: DispatchConfig,
    bodies: BodiesConfig,
    workers: WorkerSecret,
    log: renderer::deploy::process::LogConfig,
}

impl renderer::deploy::config::Secrets for FileConfig {
    fn secrets() -> Vec<renderer::deploy::config::SecretPath> {
        vec![
            renderer::deploy::config::WORKERS_SECRET,
            renderer::deploy::aws::BODIES_S3_SECRET,
            renderer::deploy::aws::DISPATCH_SNS_SECRET,
        ]
    }
}

/// Render workers allocate and free message-sized strings on many threads; mimalloc returns that
/// memory where the system allocator keeps an arena per thread.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    renderer::deploy::process::run(run(Args::parse()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let cfg: FileConfig = renderer::deploy::config::load(args.config.as_deref(), std::env::vars())?;
    cfg.log.install("info")?;
    let secret = cfg.workers.require()?;
    let source = Arc::new(HttpRenderSource::new(&args.conductor, secret)?);
    let bodies = cfg.bodies.open().await?;
    let renderer = Arc::new(Renderer::new(source, bodies));
    let stop = renderer::deploy::process::shutdown_signal();
    let app = RendererApp::build(
        &cfg.renderer,
        &cfg.dispatch,
        renderer,
        Arc::new(HttpsCertFetcher::new()?),
    )
    .await?;
    app.run_until(stop).await?;
    Ok(())
}
