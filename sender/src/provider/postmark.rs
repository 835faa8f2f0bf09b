//! Postmark: `POST {base}/email`, JSON, `X-Postmark-Server-Token`; the answer's `ErrorCode` decides.
//! Bulk mail goes through a broadcast message stream (`[provider.postmark] message_stream`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{classify, exchange, JsonApi, OutgoingMessage, Provider};
use crate::clock::Clock;
use crate::lease::Outcome;

#[derive(Debug)]
pub struct Postmark {
    api: JsonApi,
    stream: String,
}

impl Postmark {
    pub fn new(
        base_url: &str,
        token: String,
        stream: &str,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            api: JsonApi::new(base_url, "/email", token, timeout, clock)?,
            stream: stream.to_string(),
        })
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
        let request = self
            .api
            .post(&self.body(msg))
            .header("X-Postmark-Server-Token", &self.api.key)
            .header(reqwest::header::ACCEPT, "application/json");
        match exchange(request, &self.api.clock).await {
            Ok(a) => classify::postmark(a.status, a.retry_after_ms, &a.body),
            Err(outcome) => outcome,
        }
    }
}
