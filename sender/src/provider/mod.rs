//! Mail providers behind one trait. Each adapter turns the provider's answer into an [`Outcome`];
//! the classification itself is pure ([`classify`]) so it is tested without a network.

pub mod classify;
pub mod mailgun;
pub mod outbox;
pub mod postmark;
pub mod resend;
pub mod sendgrid;
pub mod ses;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use renderer::{RenderedBatch, RenderedMessage};

use crate::clock::Clock;
use crate::lease::Outcome;

pub use mailgun::Mailgun;
pub use outbox::Outbox;
pub use postmark::Postmark;
pub use resend::Resend;
pub use sendgrid::SendGrid;
pub use ses::Ses;

/// One message to send: the campaign-wide parts from its batch, the personal ones from the message.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingMessage<'a> {
    pub batch: &'a RenderedBatch,
    pub message: &'a RenderedMessage,
}

impl OutgoingMessage<'_> {
    /// The batch's headers plus this message's Message-ID, in order.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = self
            .batch
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers.push(("Message-ID".into(), format!("<{}>", self.message_id())));
        // RFC 8058: a one-click unsubscribe needs both headers, and the signature (DKIM, by the
        // provider) must cover them.
        if let Some(value) = &self.message.list_unsubscribe {
            headers.push(("List-Unsubscribe".into(), value.clone()));
            headers.push((
                "List-Unsubscribe-Post".into(),
                "List-Unsubscribe=One-Click".into(),
            ));
        }
        headers
    }

    /// [`Self::headers`] as the JSON object SendGrid and Resend take.
    pub fn header_map(&self) -> serde_json::Map<String, serde_json::Value> {
        self.headers()
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect()
    }

    pub fn to(&self) -> renderer::Mailbox {
        renderer::Mailbox {
            name: self.message.to_name.clone(),
            email: self.message.to.clone(),
        }
    }

    /// A Message-ID that is the same every time this recipient of this campaign is sent, so a
    /// provider or mailbox that deduplicates on it can.
    pub fn message_id(&self) -> String {
        let domain = self
            .batch
            .from
            .email
            .rsplit_once('@')
            .map_or("localhost", |(_, d)| d);
        format!(
            "{}.{}@{}",
            self.batch.campaign_id, self.message.recipient_id, domain
        )
    }
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn send(&self, msg: OutgoingMessage<'_>) -> Outcome;

    /// How many distinct messages one request may carry. Most APIs take one personalised message per
    /// call; Postmark's `/email/batch` takes up to 500.
    fn batch_limit(&self) -> usize {
        1
    }

    /// Sends several messages in one request: one outcome per message, in order. Each message still
    /// costs its own token.
    async fn send_batch(&self, msgs: &[OutgoingMessage<'_>]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            out.push(self.send(*m).await);
        }
        out
    }
}

/// The HTTP client every API adapter uses: the provider timeout for the whole request, a shorter one
/// for connecting, and a pool sized for a lane's concurrency.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(64)
        .build()
}

/// A provider's JSON API: one endpoint, one secret, one client. The secret is never printed.
pub struct JsonApi {
    pub client: reqwest::Client,
    pub url: String,
    pub key: String,
    pub clock: Arc<dyn Clock>,
}

impl JsonApi {
    pub fn new(
        base_url: &str,
        path: &str,
        key: String,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: http_client(timeout)?,
            url: format!("{}{path}", base_url.trim_end_matches('/')),
            key,
            clock,
        })
    }

    pub fn post(&self, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.client.post(&self.url).json(body)
    }
}

impl std::fmt::Debug for JsonApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonApi").field("url", &self.url).finish()
    }
}

/// What came back from a provider, read in full, for a pure classifier.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// From `Retry-After` (seconds or HTTP-date) or `X-RateLimit-Reset` (epoch seconds), in ms from now.
    pub retry_after_ms: Option<i64>,
    /// The provider's message id when it comes in a header (SendGrid's `X-Message-Id`).
    pub message_id_header: Option<String>,
    pub body: String,
}

/// Sends `request` and reads the answer; a transport failure is already an outcome.
pub async fn exchange(
    request: reqwest::RequestBuilder,
    clock: &Arc<dyn Clock>,
) -> Result<Answer, Outcome> {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Err(classify::transport_error(e.is_connect(), &e.to_string())),
    };
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let now = clock.now_ms();
    let retry_after_ms = classify::retry_after(header("retry-after").as_deref(), now)
        .or_else(|| classify::rate_limit_reset(header("x-ratelimit-reset").as_deref(), now));
    let message_id_header = header("x-message-id");
    let body = match response.text().await {
        Ok(b) => b,
        // The status line arrived; a 2xx stands even if the body was cut.
        Err(e) => {
            tracing::debug!(status, error = %e, "provider body unreadable");
            String::new()
        }
    };
    Ok(Answer {
        status,
        retry_after_ms,
        message_id_header,
        body,
    })
}
