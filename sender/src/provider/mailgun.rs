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

    /// The message as an `application/x-www-form-urlencoded` body, encoded straight from the
    /// rendered batch: the HTML and text parts are most of a request and are neither copied nor
    /// collected into pairs first (that was a tenth of the uncapped send path's CPU).
    fn form(msg: OutgoingMessage<'_>) -> Vec<u8> {
        let (b, m) = (msg.batch, msg.message);
        let mut form = Form::with_capacity(m.html.len() + m.text.len() + 1024);
        form.field("from", &b.from.to_string());
        form.field("to", &msg.to().to_string());
        form.field("subject", &m.subject);
        form.field("html", &m.html);
        form.field("text", &m.text);
        form.field("v:campaign_id", &b.campaign_id);
        form.field("v:recipient_id", &m.recipient_id.to_string());
        if let Some(r) = &b.reply_to {
            form.field("h:Reply-To", &r.to_string());
        }
        for (name, value) in msg.headers() {
            form.field(&format!("h:{name}"), &value);
        }
        form.0
    }
}

/// The bytes a form keeps as they are; a table, because markup is mostly bytes that are not.
const KEPT: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_');
        c += 1;
    }
    t
};

/// An urlencoded form body, as browsers write one (the WHATWG `application/x-www-form-urlencoded`
/// serializer): `*-._` and alphanumerics as they are, space as `+`, every other byte `%XX`.
struct Form(Vec<u8>);

impl Form {
    fn with_capacity(n: usize) -> Self {
        // Markup escapes more than prose; a third more is the usual growth for HTML.
        Self(Vec::with_capacity(n + n / 3))
    }

    fn field(&mut self, name: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push(b'&');
        }
        self.encode(name);
        self.0.push(b'=');
        self.encode(value);
    }

    fn encode(&mut self, s: &str) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let out = &mut self.0;
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &c) in bytes.iter().enumerate() {
            if KEPT[usize::from(c)] {
                continue;
            }
            out.extend_from_slice(&bytes[start..i]);
            if c == b' ' {
                out.push(b'+');
            } else {
                out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
            }
            start = i + 1;
        }
        out.extend_from_slice(&bytes[start..]);
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
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Self::form(msg));
        match exchange(request, &self.clock).await {
            Ok(a) => classify::mailgun(a.status, a.retry_after_ms, &a.body),
            Err(outcome) => outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Form;

    #[test]
    fn a_form_is_encoded_as_browsers_encode_it() {
        let mut form = Form::with_capacity(0);
        form.field("h:To", "a b&c=d/é*-._~+%\r\n");
        form.field("empty", "");
        assert_eq!(
            String::from_utf8(form.0).unwrap(),
            "h%3ATo=a+b%26c%3Dd%2F%C3%A9*-._%7E%2B%25%0D%0A&empty="
        );
    }
}
