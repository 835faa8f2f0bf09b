//! Postmark: `POST {base}/email`, or `/email/batch` with up to 500 distinct messages, JSON,
//! `X-Postmark-Server-Token`; each answer's `ErrorCode` decides (a batch answers 200 even when some
//! of its messages failed). Bulk mail goes through a broadcast message stream
//! (`[provider.postmark] message_stream`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{classify, exchange, JsonApi, OutgoingMessage, Provider};
use crate::clock::Clock;
use crate::lease::Outcome;

/// Postmark's limit for `/email/batch`.
pub const MAX_BATCH: usize = 500;

#[derive(Debug)]
pub struct Postmark {
    api: JsonApi,
    batch_url: String,
    batch_size: usize,
    stream: String,
}

impl Postmark {
    /// `batch_size` messages per request at most (1: always `/email`).
    pub fn new(
        base_url: &str,
        token: String,
        stream: &str,
        batch_size: usize,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        let api = JsonApi::new(base_url, "/email", token, timeout, clock)?;
        Ok(Self {
            batch_url: format!("{}/batch", api.url),
            api,
            batch_size: batch_size.clamp(1, MAX_BATCH),
            stream: stream.to_string(),
        })
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request
            .header("X-Postmark-Server-Token", &self.api.key)
            .header(reqwest::header::ACCEPT, "application/json")
    }

    pub fn body(&self, msg: OutgoingMessage<'_>) -> Value {
        let (b, m) = (msg.batch, msg.message);
        let headers: Vec<Value> = msg
            .headers()
            .into_iter()
            .map(|(k, v)| json!({"Name": k, "Value": v}))
            .collect();
        let mut body = json!({
            "From": b.from.to_string(),
            "To": msg.to().to_string(),
            "Subject": m.subject,
            "HtmlBody": m.html,
            "TextBody": m.text,
            "Headers": headers,
            // Echoed in bounce and delivery webhooks.
            "Metadata": {
                "campaign_id": b.campaign_id,
                "recipient_id": m.recipient_id.to_string(),
            },
            "MessageStream": self.stream,
        });
        if let Some(r) = &b.reply_to {
            body["ReplyTo"] = r.to_string().into();
        }
        body
    }
}

#[async_trait]
impl Provider for Postmark {
    fn name(&self) -> &'static str {
        "postmark"
    }

    async fn send(&self, msg: OutgoingMessage<'_>) -> Outcome {
        let request = self.authorised(self.api.post(&self.body(msg)));
        match exchange(request, &self.api.clock).await {
            Ok(a) => classify::postmark(a.status, a.retry_after_ms, &a.body),
            Err(outcome) => outcome,
        }
    }

    fn batch_limit(&self) -> usize {
        self.batch_size
    }

    async fn send_batch(&self, msgs: &[OutgoingMessage<'_>]) -> Vec<Outcome> {
        if let [one] = msgs {
            return vec![self.send(*one).await];
        }
        let bodies: Vec<Value> = msgs.iter().map(|m| self.body(*m)).collect();
        let request = self.authorised(self.api.client.post(&self.batch_url).json(&bodies));
        match exchange(request, &self.api.clock).await {
            Ok(a) => classify::postmark_batch(a.status, a.retry_after_ms, &a.body, msgs.len()),
            Err(outcome) => vec![outcome; msgs.len()],
        }
    }
}
