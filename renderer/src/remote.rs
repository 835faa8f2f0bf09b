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

/// A conductor reached over HTTP.
pub struct HttpRenderSource {
    client: reqwest::Client,
    base: String,
    secret: String,
}

impl std::fmt::Debug for HttpRenderSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRenderSource")
            .field("base", &self.base)
            .finish()
    }
}

impl HttpRenderSource {
    pub fn new(base: &str, secret: String) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            secret,
        })
    }

    async fn post<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<reqwest::Response, SourceError> {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.secret)
            .json(body)
            .send()
            .await
            .map_err(|e| SourceError::Unavailable(e.to_string()))
    }
}

async fn refused(response: reqwest::Response) -> SourceError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    SourceError::Unavailable(format!("conductor answered {status}: {body}"))
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
            _ => Err(refused(response).await),
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
            Err(refused(response).await)
        }
    }
}
