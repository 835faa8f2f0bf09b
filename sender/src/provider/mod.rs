//! Mail providers behind one trait. Each adapter turns the provider's answer into an [`Outcome`];
//! the classification itself is pure ([`classify`]) so it is tested without a network.

pub mod classify;
pub mod mailgun;
pub mod outbox;

use async_trait::async_trait;
use renderer::{RenderedBatch, RenderedMessage};

use crate::lease::Outcome;

pub use mailgun::Mailgun;
pub use outbox::Outbox;

/// One message to send: the campaign-wide parts from its batch, the personal ones from the message.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingMessage<'a> {
    pub batch: &'a RenderedBatch,
    pub message: &'a RenderedMessage,
}

impl OutgoingMessage<'_> {
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
}
