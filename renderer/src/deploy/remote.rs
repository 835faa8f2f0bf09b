//! The render contract over HTTP, for `renderer` processes on other hosts. The conductor serves these
//! routes; this crate owns their shapes and carries the client. Every call carries the workers'
//! shared secret as a bearer token.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::job::{RenderInput, RenderJob, RenderSource, SourceError};

/// POST a [`RenderJob`]: 200 with its [`RenderInput`] when this worker may render it now, 410 when it
/// needs no rendering (done, cancelled, or another worker holds it).
pub const CLAIM_PATH: &str = "/internal/v1/render/claims";
/// POST a [`RenderedReport`]: 204.
pub const RENDERED_PATH: &str = "/internal/v1/render/rendered";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderedReport {
    pub job: RenderJob,
    pub key: String,
    /// Recipients whose message could not be rendered, with the reason.
    pub failed: Vec<(i64, String)>,
}

/// A conductor's worker API: its base URL, the workers' bearer secret, one HTTP client. Remote
/// renderers and senders (`sender::remote`) both reach the conductor through it.
pub struct ConductorClient {
    client: reqwest::Client,
    base: String,
    secret: String,
}

impl std::fmt::Debug for ConductorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("ConductorClient")
            .field("base", &self.base)
            .finish()
    }
}

impl ConductorClient {
    pub fn new(base: &str, secret: String) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            secret,
        })
    }

    /// POSTs `body` as JSON to `path` with the secret.
    pub async fn post<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.secret)
            .json(body)
            .send()
            .await
    }
}

/// A refusal's status and body, for the worker's log.
pub async fn refusal(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    format!("conductor answered {status}: {body}")
}

/// A conductor reached over HTTP, as a render source.
#[derive(Debug)]
pub struct HttpRenderSource {
    conductor: ConductorClient,
}

impl HttpRenderSource {
    pub fn new(base: &str, secret: String) -> Result<Self, reqwest::Error> {
        Ok(Self {
            conductor: ConductorClient::new(base, secret)?,
        })
    }

    async fn post<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<reqwest::Response, SourceError> {
        self.conductor
            .post(path, body)
            .await
            .map_err(|e| SourceError::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl RenderSource for HttpRenderSource {
    async fn load(&self, job: &RenderJob) -> Result<RenderInput, SourceError> {
        let response = self.post(CLAIM_PATH, job).await?;
        match response.status().as_u16() {
            200 => response
                .json()
                .await
                .map_err(|e| SourceError::Unavailable(e.to_string())),
            410 => Err(SourceError::Gone(format!(
                "{}/{} needs no rendering",
                job.campaign_id, job.batch
            ))),
            _ => Err(SourceError::Unavailable(refusal(response).await)),
        }
    }

    async fn rendered(
        &self,
        job: &RenderJob,
        key: &str,
        failed: Vec<(i64, String)>,
    ) -> Result<(), SourceError> {
        let report = RenderedReport {
            job: job.clone(),
            key: key.to_string(),
            failed,
        };
        let response = self.post(RENDERED_PATH, &report).await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(SourceError::Unavailable(refusal(response).await))
        }
    }
}
