//! Mailgun: `POST {base}/v3/{domain}/messages`, form-encoded, basic auth `api:{key}`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{classify, exchange, OutgoingMessage, Provider};
use crate::clock::Clock;
use crate::lease::Outcome;

#[derive(Clone)]
pub struct Mailgun {
    client: reqwest::Client,
    endpoint: String,
    api_key: String,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Mailgun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Mailgun")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Mailgun {
    pub fn new(
        base_url: &str,
        domain: &str,
        api_key: String,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: super::http_client(timeout)?,
            endpoint: format!("{}/v3/{domain}/messages", base_url.trim_end_matches('/')),
            api_key,
            clock,
        })
    }

    fn form(msg: OutgoingMessage<'_>) -> Vec<(String, String)> {
        let (b, m) = (msg.batch, msg.message);
        let mut form = vec![
            ("from".to_string(), b.from.to_string()),
            ("to".to_string(), msg.to().to_string()),
            ("subject".to_string(), m.subject.clone()),
            ("html".to_string(), m.html.clone()),
            ("text".to_string(), m.text.clone()),
            ("v:campaign_id".to_string(), b.campaign_id.clone()),
            ("v:recipient_id".to_string(), m.recipient_id.to_string()),
        ];
        if let Some(r) = &b.reply_to {
            form.push(("h:Reply-To".to_string(), r.to_string()));
        }
        for (name, value) in msg.headers() {
            form.push((format!("h:{name}"), value));
        }
        form
    }
}

#[async_trait]
impl Provider for Mailgun {
    fn name(&self) -> &'static str {
        "mailgun"
    }

    async fn send(&self, msg: OutgoingMessage<'_>) -> Outcome {
        let request = self
            .client
            .post(&self.endpoint)
            .basic_auth("api", Some(&self.api_key))
            .form(&Self::form(msg));
        match exchange(request, &self.clock).await {
            Ok(a) => classify::mailgun(a.status, a.retry_after_ms, &a.body),
            Err(outcome) => outcome,
        }
    }
}
