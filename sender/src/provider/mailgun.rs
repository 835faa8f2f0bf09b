//! Mailgun: `POST {base}/v3/{domain}/messages`, form-encoded, basic auth `api:{key}`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{classify, OutgoingMessage, Provider};
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
        let b = msg.batch;
        let m = msg.message;
        let to = renderer::Mailbox {
            name: m.to_name.clone(),
            email: m.to.clone(),
        };
        let mut form = vec![
            ("from".to_string(), b.from.to_string()),
            ("to".to_string(), to.to_string()),
            ("subject".to_string(), m.subject.clone()),
            ("html".to_string(), m.html.clone()),
            ("text".to_string(), m.text.clone()),
            ("v:campaign_id".to_string(), b.campaign_id.clone()),
            ("v:recipient_id".to_string(), m.recipient_id.to_string()),
            (
                "h:Message-Id".to_string(),
                format!("<{}>", msg.message_id()),
            ),
        ];
        if let Some(r) = &b.reply_to {
            form.push(("h:Reply-To".to_string(), r.to_string()));
        }
        for (name, value) in &b.headers {
            form.push((format!("h:{name}"), value.clone()));
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
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return classify::transport_error(e.is_connect(), &e.to_string()),
        };
        let status = response.status().as_u16();
        let retry_after = classify::retry_after(
            response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            self.clock.now_ms(),
        );
        match response.text().await {
            Ok(body) => classify::mailgun(status, retry_after, &body),
            // The status line arrived; a 2xx is accepted even if the body was cut.
            Err(e) if (200..300).contains(&status) => {
                tracing::debug!(error = %e, "Mailgun body unreadable after 2xx");
                Outcome::Sent { provider_id: None }
            }
            Err(e) => classify::mailgun(status, retry_after, &e.to_string()),
        }
    }
}
