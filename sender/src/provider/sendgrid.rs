//! SendGrid v3: `POST {base}/v3/mail/send`, JSON, `Authorization: Bearer {key}`; 202 with the id in
//! `X-Message-Id`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{classify, exchange, JsonApi, OutgoingMessage, Provider};
use crate::clock::Clock;
use crate::lease::Outcome;

#[derive(Debug)]
pub struct SendGrid {
    api: JsonApi,
}

fn address(m: &renderer::Mailbox) -> Value {
    match &m.name {
        Some(name) => json!({"email": m.email, "name": name}),
        None => json!({"email": m.email}),
    }
}

impl SendGrid {
    pub fn new(
        base_url: &str,
        api_key: String,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            api: JsonApi::new(base_url, "/v3/mail/send", api_key, timeout, clock)?,
        })
    }

    pub fn body(msg: OutgoingMessage<'_>) -> Value {
        let (b, m) = (msg.batch, msg.message);
        let headers = msg.header_map();
        let mut body = json!({
            "personalizations": [{
                "to": [address(&msg.to())],
                // Echoed in event webhooks: how feedback finds its recipient.
                "custom_args": {
                    "campaign_id": b.campaign_id,
                    "recipient_id": m.recipient_id.to_string(),
                },
            }],
            "from": address(&b.from),
            "subject": m.subject,
            // SendGrid requires text/plain before text/html.
            "content": [
                {"type": "text/plain", "value": m.text},
                {"type": "text/html", "value": m.html},
            ],
            "headers": headers,
        });
        if let Some(r) = &b.reply_to {
            body["reply_to"] = address(r);
        }
        body
    }
}

#[async_trait]
impl Provider for SendGrid {
    fn name(&self) -> &'static str {
        "sendgrid"
    }

    async fn send(&self, msg: OutgoingMessage<'_>) -> Outcome {
        let request = self.api.post(&Self::body(msg)).bearer_auth(&self.api.key);
        match exchange(request, &self.api.clock).await {
            Ok(a) => classify::sendgrid(a.status, a.retry_after_ms, a.message_id_header, &a.body),
            Err(outcome) => outcome,
        }
    }
}
