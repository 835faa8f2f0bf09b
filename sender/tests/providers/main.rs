//! Provider adapters against wiremock, with each provider's documented request and response shapes.

mod http_apis;
mod mailgun;
mod ses;

use renderer::{Mailbox, RenderedBatch, RenderedMessage};

/// One rendered message with the awkward parts: a non-ASCII display name, `&` in the subject.
pub fn batch() -> RenderedBatch {
    RenderedBatch {
        version: renderer::batch::FORMAT_VERSION,
        campaign_id: "cmp1".into(),
        batch: 0,
        from: Mailbox {
            name: Some("Acme News".into()),
            email: "news@mg.example.com".into(),
        },
        reply_to: Some(Mailbox {
            name: None,
            email: "help@example.com".into(),
        }),
        headers: Default::default(),
        messages: vec![RenderedMessage {
            recipient_id: 17,
            to: "zoe@example.org".into(),
            to_name: Some("Zoë".into()),
            subject: "Grüße & more".into(),
            html: "<p>Hi</p>".into(),
            text: "Hi".into(),
            list_unsubscribe: Some("<https://mail.example.com/u/t0k>".into()),
        }],
    }
}
