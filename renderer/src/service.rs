//! The `renderer` service: SNS delivers render jobs to `POST /sns`; each genuine, first-seen job is
//! queued for the render workers, and the answer goes back at once (SNS wants one within 15 s, and
//! moto holds its Publish call open until we answer).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::deploy::aws::{DispatchConfig, DispatchMode};
use crate::job::RenderJob;
use crate::sns::{confirm_subscription, MessageType, SeenIds, SnsError, Verifier};

pub const SNS_PATH: &str = "/sns";
/// Deliveries remembered for de-duplication: far more than SNS's retry window can hold for one host.
const SEEN_IDS: usize = 100_000;

/// `[renderer]`: the renderer service's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RendererSettings {
    pub listen: String,
    /// Render workers; 0 means one per core.
    pub workers: usize,
    /// Check SNS signatures. Off only for emulators that cannot sign (moto); never in production.
    pub verify_signatures: bool,
    /// This service's `/sns` URL as SNS should reach it. When set, the renderer subscribes itself to
    /// `[dispatch.sns] topic_arn` on start and unsubscribes on shutdown.
    pub public_url: Option<String>,
}

impl Default for RendererSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8090".into(),
            workers: 0,
            verify_signatures: true,
            public_url: None,
        }
    }
}

impl RendererSettings {
    pub fn check(
        &self,
        dispatch: &DispatchConfig,
    ) -> Result<SocketAddr, crate::deploy::config::ConfigError> {
        use crate::deploy::config::invalid;
        if dispatch.mode != DispatchMode::Sns {
            return Err(invalid(
                "dispatch.mode",
                "a renderer service receives jobs from SNS: set it to \"sns\"",
            ));
        }
        dispatch.check()?;
        if let Some(url) = &self.public_url {
            crate::deploy::config::check_http_url("renderer.public_url", url)?;
        }
        self.listen.parse().map_err(|e| {
            invalid(
                "renderer.listen",
                format!("{:?} is not host:port: {e}", self.listen),
            )
        })
    }

    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.workers
        }
    }
}

pub struct SnsEndpoint {
    verifier: Verifier,
    seen: Mutex<SeenIds>,
    jobs: mpsc::UnboundedSender<RenderJob>,
    http: reqwest::Client,
}

impl SnsEndpoint {
    pub fn new(verifier: Verifier, jobs: mpsc::UnboundedSender<RenderJob>) -> Self {
        Self {
            verifier,
            seen: Mutex::new(SeenIds::new(SEEN_IDS)),
            jobs,
            http: crate::sns::confirm_client(),
        }
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(SNS_PATH, post(deliver))
            .route("/health", get(|| async { "ok" }))
            .with_state(self)
    }

    async fn confirm(&self, url: &str) -> Result<(), String> {
        confirm_subscription(&self.http, &self.verifier, url).await
    }
}

fn answer(status: StatusCode, text: impl Into<String>) -> Response {
    (status, text.into()).into_response()
}

/// SNS sends `text/plain`: the body is read as bytes, whatever the content type says.
async fn deliver(
    State(svc): State<Arc<SnsEndpoint>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let msg = match svc.verifier.check(&body).await {
        Ok(m) => m,
        Err(e @ (SnsError::Malformed(_) | SnsError::UnknownType(_))) => {
            return answer(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e @ SnsError::CertFetch(_)) => {
            // Not the sender's fault: let SNS retry later.
            tracing::warn!(error = %e, "SNS delivery not verified yet");
            return answer(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        Err(e) => {
            tracing::warn!(error = %e, "SNS delivery refused");
            return answer(StatusCode::FORBIDDEN, e.to_string());
        }
    };
    let declared = headers
        .get("x-amz-sns-message-type")
        .and_then(|v| v.to_str().ok());
    if declared.is_some_and(|d| d != msg.kind) {
        return answer(
            StatusCode::BAD_REQUEST,
            "x-amz-sns-message-type disagrees with the message's Type",
        );
    }
    match msg.message_type() {
        Ok(MessageType::SubscriptionConfirmation) => {
            let url = msg.subscribe_url.as_deref().unwrap_or_default();
            match svc.confirm(url).await {
                Ok(()) => {
                    tracing::info!(topic = %msg.topic_arn, "SNS subscription confirmed");
                    answer(StatusCode::OK, "confirmed")
                }
                Err(e) => {
                    tracing::warn!(topic = %msg.topic_arn, error = %e, "SNS subscription not confirmed");
                    answer(StatusCode::BAD_GATEWAY, e)
                }
            }
        }
        Ok(MessageType::UnsubscribeConfirmation) => {
            tracing::info!(topic = %msg.topic_arn, "SNS subscription ended");
            answer(StatusCode::OK, "noted")
        }
        Ok(MessageType::Notification) => {
            let job: RenderJob = match serde_json::from_str(&msg.message) {
                Ok(j) => j,
                Err(e) => {
                    // A retry would not make it any better: accept and drop.
                    tracing::warn!(message_id = %msg.message_id, error = %e, "not a render job");
                    return answer(StatusCode::OK, "ignored: not a render job");
                }
            };
            let first = svc
                .seen
                .lock()
                .expect("seen ids poisoned")
                .first_time(&msg.message_id);
            if first && svc.jobs.send(job).is_err() {
                return answer(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
            }
            answer(StatusCode::OK, if first { "queued" } else { "duplicate" })
        }
        Err(e) => answer(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::deploy::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot subscribe {endpoint} to {topic}: {reason}")]
    Subscribe {
        endpoint: String,
        topic: String,
        reason: String,
    },
}

/// A renderer service: the `/sns` endpoint, its render workers, and (optionally) its own SNS
/// subscription. Binds before it serves so tests can ask for port 0.
pub struct RendererApp {
    listener: tokio::net::TcpListener,
    endpoint: Arc<SnsEndpoint>,
    renderer: Arc<crate::Renderer>,
    jobs: mpsc::UnboundedReceiver<RenderJob>,
    workers: usize,
    public_url: Option<String>,
    dispatch: DispatchConfig,
}

impl RendererApp {
    pub async fn build(
        settings: &RendererSettings,
        dispatch: &DispatchConfig,
        renderer: Arc<crate::Renderer>,
        fetcher: Arc<dyn crate::sns::CertFetcher>,
    ) -> Result<Self, AppError> {
        let addr = settings.check(dispatch)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| AppError::Bind { addr, source })?
            .port();
        let verifier = Verifier::new(
            [dispatch.sns.topic_arn.clone()],
            settings.verify_signatures,
            fetcher,
        );
        let (tx, jobs) = mpsc::unbounded_channel();
        Ok(Self {
            listener,
            endpoint: Arc::new(SnsEndpoint::new(verifier, tx)),
            renderer,
            jobs,
            workers: settings.worker_count(),
            public_url: settings
                .public_url
                .as_ref()
                .map(|u| u.replace("{port}", &port.to_string())),
            dispatch: dispatch.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes; then leaves the topic, stops taking deliveries, and lets
    /// the workers finish the jobs already queued.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let addr = self.local_addr();
        let jobs = Arc::new(tokio::sync::Mutex::new(self.jobs));
        let workers: Vec<_> = (0..self.workers)
            .map(|_| tokio::spawn(self.renderer.clone().run(jobs.clone())))
            .collect();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(self.listener, self.endpoint.router())
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await
        });
        let subscription = match &self.public_url {
            Some(url) => match subscribe(&self.dispatch, url).await {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = stop_tx.send(());
                    let _ = server.await;
                    return Err(e);
                }
            },
            None => None,
        };
        tracing::info!(%addr, topic = %self.dispatch.sns.topic_arn, workers = workers.len(), "renderer started");
        shutdown.await;
        if let Some((client, arn)) = subscription {
            match client.unsubscribe().subscription_arn(&arn).send().await {
                Ok(_) => tracing::info!(subscription = %arn, "left the render topic"),
                Err(e) => {
                    tracing::warn!(subscription = %arn, error = %crate::deploy::aws::describe(&e), "could not unsubscribe")
                }
            }
        }
        let _ = stop_tx.send(());
        match server.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "server task failed"),
            Ok(Ok(())) => {}
        }
        for w in workers {
            if tokio::time::timeout(std::time::Duration::from_secs(30), w)
                .await
                .is_err()
            {
                tracing::warn!("a render worker did not finish within 30 s");
            }
        }
        Ok(())
    }
}

async fn subscribe(
    dispatch: &DispatchConfig,
    url: &str,
) -> Result<(aws_sdk_sns::Client, String), AppError> {
    let client = dispatch.sns.client().await;
    let protocol = if url.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    let failed = |reason: String| AppError::Subscribe {
        endpoint: url.to_string(),
        topic: dispatch.sns.topic_arn.clone(),
        reason,
    };
    let out = client
        .subscribe()
        .topic_arn(&dispatch.sns.topic_arn)
        .protocol(protocol)
        .endpoint(url)
        .return_subscription_arn(true)
        .send()
        .await
        .map_err(|e| failed(crate::deploy::aws::describe(&e)))?;
    let arn = out
        .subscription_arn()
        .ok_or_else(|| failed("SNS returned no subscription ARN".into()))?
        .to_string();
    tracing::info!(endpoint = %url, subscription = %arn, "subscribed to the render topic");
    Ok((client, arn))
}
