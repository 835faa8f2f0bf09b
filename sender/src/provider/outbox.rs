//! The embedded provider: every message becomes a real RFC 5322 `.eml` file a mail client can open.
//! Nothing leaves the machine, which makes it the safe default for demos and tests.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use mail_builder::headers::text::Text;
use mail_builder::MessageBuilder;

use super::{OutgoingMessage, Provider};
use crate::clock::Clock;
use crate::lease::Outcome;

pub struct Outbox {
    dir: PathBuf,
    clock: Arc<dyn Clock>,
}

impl Outbox {
    pub fn new(dir: impl Into<PathBuf>, clock: Arc<dyn Clock>) -> Self {
        Self {
            dir: dir.into(),
            clock,
        }
    }

    /// Where a recipient's message lands: `{dir}/{campaign}/{recipient}.eml`.
    pub fn path_for(&self, campaign_id: &str, recipient_id: i64) -> PathBuf {
        self.dir
            .join(campaign_id)
            .join(format!("{recipient_id:09}.eml"))
    }

    /// The complete message, CRLF line endings, headers RFC 2047-encoded where they are not ASCII.
    pub fn build(msg: OutgoingMessage<'_>, date_secs: i64) -> Vec<u8> {
        let b = msg.batch;
        let m = msg.message;
        let mut builder = MessageBuilder::new()
            .message_id(msg.message_id())
            .date(date_secs)
            .from(mailbox(&b.from.name, &b.from.email))
            .to(mailbox(&m.to_name, &m.to))
            .subject(m.subject.as_str())
            .text_body(m.text.as_str())
            .html_body(m.html.as_str())
            .header("X-Campaign-ID", Text::new(b.campaign_id.as_str()));
        if let Some(r) = &b.reply_to {
            builder = builder.reply_to(mailbox(&r.name, &r.email));
        }
        for (name, value) in &b.headers {
            builder = builder.header(name.as_str(), Text::new(value.as_str()));
        }
        if let Some(value) = &m.list_unsubscribe {
            builder = builder
                .header("List-Unsubscribe", Text::new(value.as_str()))
                .header(
                    "List-Unsubscribe-Post",
                    Text::new("List-Unsubscribe=One-Click"),
                );
        }
        builder.write_to_vec().unwrap_or_default()
    }
}

fn mailbox<'a>(
    name: &'a Option<String>,
    email: &'a str,
) -> mail_builder::headers::address::Address<'a> {
    match name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) => (n, email).into(),
        None => email.into(),
    }
}

#[async_trait]
impl Provider for Outbox {
    fn name(&self) -> &'static str {
        "outbox"
    }

    async fn send(&self, msg: OutgoingMessage<'_>) -> Outcome {
        let bytes = Self::build(msg, self.clock.now_ms() / 1000);
        let path = self.path_for(&msg.batch.campaign_id, msg.message.recipient_id);
        let tmp = path.with_extension("eml.tmp");
        let write = async {
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, &path).await
        };
        match write.await {
            Ok(()) => Outcome::Sent {
                provider_id: Some(msg.message_id()),
            },
            // A local disk error proves nothing was delivered: try again later.
            Err(e) => Outcome::Deferred {
                reason: format!("outbox write {}: {e}", path.display()),
                retry_after_ms: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use renderer::{Mailbox, RenderedBatch, RenderedMessage};

    fn batch() -> RenderedBatch {
        RenderedBatch {
            version: renderer::batch::FORMAT_VERSION,
            campaign_id: "c42".into(),
            batch: 0,
            from: Mailbox {
                name: Some("Café Crème".into()),
                email: "news@example.com".into(),
            },
            reply_to: Some(Mailbox {
                name: None,
                email: "help@example.com".into(),
            }),
            headers: Default::default(),
            messages: vec![RenderedMessage {
                recipient_id: 7,
                to: "zoe@example.org".into(),
                to_name: Some("Zoë Ñúñez".into()),
                subject: "Grüße aus Köln ✉".into(),
                html: "<p>Hallo Zoë</p>".into(),
                text: "Hallo Zoë".into(),
                list_unsubscribe: Some("<https://mail.example.com/u/t0k>".into()),
            }],
        }
    }

    #[tokio::test]
    async fn writes_a_multipart_alternative_message_with_encoded_headers() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let outbox = Outbox::new(dir.path(), clock);
        let b = batch();
        let msg = OutgoingMessage {
            batch: &b,
            message: &b.messages[0],
        };
        let outcome = outbox.send(msg).await;
        assert_eq!(
            outcome,
            Outcome::Sent {
                provider_id: Some("c42.7@example.com".into())
            }
        );
        let eml = std::fs::read_to_string(outbox.path_for("c42", 7)).unwrap();
        assert!(eml.contains("Message-ID: <c42.7@example.com>\r\n"), "{eml}");
        assert!(eml.contains("Content-Type: multipart/alternative"), "{eml}");
        assert!(eml.contains("text/plain; charset=\"utf-8\""), "{eml}");
        assert!(eml.contains("text/html; charset=\"utf-8\""), "{eml}");
        assert!(eml.contains("Reply-To: <help@example.com>"), "{eml}");
        assert!(
            eml.contains("List-Unsubscribe: <https://mail.example.com/u/t0k>\r\n"),
            "{eml}"
        );
        assert!(
            eml.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
            "{eml}"
        );
        // Non-ASCII headers are RFC 2047 encoded words; the raw UTF-8 never appears in a header.
        let headers = eml.split("\r\n\r\n").next().unwrap();
        assert!(headers.is_ascii(), "{headers}");
        assert!(headers.contains("Subject: =?utf-8?"), "{headers}");
        assert!(headers.contains("<zoe@example.org>"), "{headers}");
        assert!(headers.contains("Date: Tue, 14 Nov 2023"), "{headers}");
    }
}
