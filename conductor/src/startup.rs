//! Building the conductor: the embedded workers (`Runtime`) and, around them, the HTTP server
//! (`Application`), which binds before it serves so tests can ask for port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use renderer::deploy::aws::DispatchMode;
use renderer::Renderer;
use sender::{Clock, Sender};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::engine::dispatch::{Dispatch, LocalDispatch, SnsDispatch};
use crate::engine::events::{EventSink, Events, SnsEvents};
use crate::engine::work::Work;
use crate::http::service::Service;
use crate::store::{SqlStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a test may put in place of the real thing.
#[derive(Clone)]
pub struct Hooks {
    /// Where SNS signing certificates come from (HTTPS from SNS itself, by default).
    pub sns_certs: Arc<dyn renderer::sns::CertFetcher>,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            sns_certs: Arc::new(
                renderer::sns::HttpsCertFetcher::new().expect("a plain HTTP client builds"),
            ),
        }
    }
}

/// The conductor with its embedded renderer and sender workers.
pub struct Runtime {
    pub service: Arc<Service>,
    pub config: watch::Sender<Arc<Config>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// The embedded sender: it leases from `work` and sends through the configured provider, behind
/// the live `[safety]` guard; it stops on `stop`.
pub fn embedded_sender(
    work: &Arc<Work>,
    stop: CancellationToken,
) -> Result<Arc<Sender>, StartupError> {
    let config = work.config.borrow().clone();
    let live = work.config.clone();
    Ok(Arc::new(Sender::new(
        work.clone(),
        work.bodies.clone(),
        // Read at every send: a [safety] edit protects the next message.
        sender::safety::Safety::guard_live(
            config.provider.build(work.clock.clone())?,
            Arc::new(move || live.borrow().safety.clone()),
        ),
        work.clock.clone(),
        config.sender.sender_config(&config.provider),
        stop,
    )))
}

impl Runtime {
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        hooks: Hooks,
    ) -> Result<Self, StartupError> {
        config.validate()?;
        let store_url = config.store_url()?;
        let store: Arc<dyn Store> = Arc::new(SqlStore::open(&store_url).await?);
        if store_url.starts_with("sqlite:") {
            // This process alone uses the file: an import under way here before is cut off.
            let now = clock.now_ms();
            for id in store.abandon_stale_imports(now + 1, now).await? {
                tracing::warn!(campaign = %id, "an import cut off by the last stop was abandoned");
            }
        }
        let bodies = config.bodies.open().await?;
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let dispatch: Arc<dyn Dispatch> = match config.dispatch.mode {
            DispatchMode::Local => {
                // Render jobs queued in a previous process died with it: hand them out again now.
                store.reset_dispatch().await?;
                Arc::new(LocalDispatch(jobs_tx))
            }
            DispatchMode::Sns => Arc::new(SnsDispatch::connect(&config.dispatch.sns).await),
        };
        let sink: Option<Arc<dyn EventSink>> = match &config.events.sns {
            Some(topic) => Some(Arc::new(SnsEvents::connect(topic).await)),
            None => None,
        };
        let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
        let work = Arc::new(Work {
            store: store.clone(),
            clock: clock.clone(),
            config: config_rx,
            dispatch: dispatch.clone(),
            bodies: bodies.clone(),
            events: Events::new(sink, store.clone(), clock.clone()),
            wake: Notify::new(),
            throttle: Default::default(),
            metrics: Default::default(),
            views: Default::default(),
            progress: Default::default(),
        });

        if config.dispatch.mode == DispatchMode::Local {
            let jobs_rx = Arc::new(tokio::sync::Mutex::new(jobs_rx));
            let renderer = Arc::new(Renderer::new(work.clone(), bodies.clone()));
            let render_workers = std::thread::available_parallelism().map_or(2, |n| n.get());
            for _ in 0..render_workers {
                // The job channel lives as long as `work` does, so workers stop on the token; a
                // render cut short is simply handed out again.
                let (renderer, jobs_rx, stop) = (renderer.clone(), jobs_rx.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    tokio::select! {
                        _ = renderer.run(jobs_rx) => {}
                        _ = stop.cancelled() => {}
                    }
                }));
            }
        }
        tasks.push(tokio::spawn(work.clone().run_reconcile(stop.clone())));

        if config.workers.embedded_sender {
            tasks.push(tokio::spawn(embedded_sender(&work, stop.clone())?.run()));
        }

        if let Some(path) = config_path {
            tasks.push(tokio::spawn(crate::config::watch::watch_file(
                path,
                config_tx.clone(),
                store.clone(),
                work.clock.clone(),
                Duration::from_secs(5),
                stop.clone(),
            )));
        }
        let service = Arc::new(Service {
            store,
            work,
            max_body_bytes: config.server.max_body_bytes,
            max_upload_bytes: config.server.max_upload_bytes,
            ses: Default::default(),
            sns_certs: hooks.sns_certs,
            streams: CancellationToken::new(),
        });
        Ok(Self {
            service,
            config: config_tx,
            stop,
            tasks,
        })
    }

    /// Stops handing out work, lets leases in progress report, and waits for the workers.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .is_err()
            {
                tracing::warn!("a worker did not stop within 30 s");
            }
        }
    }
}

/// The REST API around a [`Runtime`].
pub struct Application {
    listener: tokio::net::TcpListener,
    runtime: Runtime,
}

impl Application {
    pub async fn build(
        config: Config,
        config_path: Option<PathBuf>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        Self::build_with(config, config_path, clock, Hooks::default()).await
    }

    pub async fn build_with(
        config: Config,
        config_path: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        hooks: Hooks,
    ) -> Result<Self, StartupError> {
        let addr = config.listen_addr()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let runtime = Runtime::start(config, config_path, clock, hooks).await?;
        Ok(Self { listener, runtime })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn service(&self) -> Arc<Service> {
        self.runtime.service.clone()
    }

    pub fn config(&self) -> watch::Sender<Arc<Config>> {
        self.runtime.config.clone()
    }

    /// Serves until `shutdown` completes, then stops the workers.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = crate::http::api::router(self.runtime.service.clone());
        // Event streams never end by themselves: close them when shutdown begins, or the graceful
        // shutdown would wait for every open browser tab.
        let streams = self.runtime.service.streams.clone();
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                streams.cancel();
            })
            .await;
        self.runtime.shutdown().await;
        served
    }
}
