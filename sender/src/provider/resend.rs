//! Resend: `POST {base}/emails`, JSON, `Authorization: Bearer {key}`, with an `Idempotency-Key`
//! derived from campaign and recipient. Resend keeps a key 24 hours and answers a repeat with the
//! first result, so a request whose answer was lost is retried instead of held as `unknown` — far
//! inside that window, as `campaigns.max_attempts` backoffs are.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{classify, exchange, JsonApi, OutgoingMessage, Provider};
use crate::clock::Clock;
use crate::lease::Outcome;

#[derive(Debug)]
pub struct Resend {
    api: JsonApi,
}

impl Resend {
    pub fn new(
        base_url: &str,
        api_key: String,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            api: JsonApi::new(base_url, "/emails", api_key, timeout, clock)?,
        })
    }

    /// The same for every attempt at this recipient of this campaign, and only for it.
    pub fn idempotency_key(msg: OutgoingMessage<'_>) -> String {
        format!("{}/{}", msg.batch.campaign_id, msg.message.recipient_id)
    }

    pub fn body(msg: OutgoingMessage<'_>) -> Value {
        let (b, m) = (msg.batch, msg.message);
        let headers = msg.header_map();
        let mut body = json!({
            "from": b.from.to_string(),
            "to": [msg.to().to_string()],
            "subject": m.subject,
            "html": m.html,
            "text": m.text,
            "headers": headers,
            // Echoed in webhooks. Tag values allow only ASCII letters, digits, '_' and '-'.
            "tags": [
                {"name": "campaign_id", "value": b.campaign_id},
                {"name": "recipient_id", "value": m.recipient_id.to_string()},
            ],
        });
        if let Some(r) = &b.reply_to {
            body["reply_to"] = r.to_string().into();
        }
        body
    }
}

#[async_trait]
impl Provider for Resend {
    fn name(&self) -> &'static str {
        "resend"
    }

    async fn send(&self, msg: OutgoingMessage<'_>) -> Outcome {
        let request = self
            .api
            .post(&Self::body(msg))
            .bearer_auth(&self.api.key)
            .header("Idempotency-Key", Self::idempotency_key(msg));
        match exchange(request, &self.api.clock).await {
            Ok(a) => classify::resend(a.status, a.retry_after_ms, &a.body),
            // The key makes a repeat harmless: what may have arrived is retried, not held.
            Err(Outcome::Unknown { reason }) => Outcome::Deferred {
                reason: format!("{reason} (retried under the same Idempotency-Key)"),
                retry_after_ms: None,
            },
            Err(outcome) => outcome,
        }
    }
}
