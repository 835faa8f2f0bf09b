//! The send contract between the conductor and a sender.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// A sender is heard from (a report, even an empty one) at most this long before it starts any send.
/// So when a sender falls silent, the conductor knows it started nothing slotted later than its last
/// report plus this (and some slack): those recipients go back to the queue, the rest are `unknown`.
pub const HEARTBEAT_MS: Millis = 1_000;

/// Recipients of one rendered batch, and the tokens to send them, each with the moment it may be spent.
///
/// Token `k` may be spent at `first_at + k × spacing_us` and never at or after `deadline`, the
/// minute's end less a safety margin. The conductor hands each lease a slice of the minute's slot line,
/// so sends from every sender sharing the cap stay evenly spaced across the minute (a GCRA with burst 1
/// over the whole fleet rather than per process).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendLease {
    pub lease_id: String,
    pub campaign_id: String,
    pub batch: u32,
    /// Where the rendered batch is, in the body store.
    pub body_key: String,
    pub recipients: Vec<i64>,
    /// Minute the tokens belong to (its first millisecond).
    pub minute: Millis,
    pub first_at: Millis,
    pub spacing_us: i64,
    pub deadline: Millis,
}

impl SendLease {
    pub fn tokens(&self) -> usize {
        self.recipients.len()
    }

    /// When token `k` may be spent.
    pub fn slot(&self, k: usize) -> Millis {
        self.first_at + (k as i64 * self.spacing_us) / 1000
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum LeaseReply {
    Lease(SendLease),
    /// There is work but this minute's budget is spent: ask again at `until`.
    NoTokens {
        until: Millis,
    },
    /// Nothing to send right now.
    Idle,
}

/// What happened to one recipient's send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Accepted by the provider.
    Sent { provider_id: Option<String> },
    /// The provider refused this recipient for good.
    Failed { reason: String },
    /// Not accepted; worth another try (a new token) no earlier than `retry_after_ms` from now when
    /// the provider said so.
    Deferred {
        reason: String,
        retry_after_ms: Option<i64>,
    },
    /// Refused for now because we are sending faster than the provider allows (HTTP 429): worth
    /// another try like [`Outcome::Deferred`], and a signal to send slower.
    Throttled {
        reason: String,
        retry_after_ms: Option<i64>,
    },
    /// The request may have reached the provider; resending could mail twice.
    Unknown { reason: String },
    /// The provider refused the account or its configuration (bad key, unverified domain): sending
    /// more would fail the same way, so the campaign should stop.
    AccountStop { reason: String },
    /// Not attempted (the minute ran out, or the send was stopped); no request was made.
    Released,
    /// Not attempted: the lease's rendered batch could not be read (missing, corrupt). The
    /// conductor renders the batch again from what it stored.
    Unreadable { reason: String },
}

impl Outcome {
    /// Whether a provider request was made, i.e. a token was spent.
    pub fn attempted(&self) -> bool {
        !matches!(self, Outcome::Released | Outcome::Unreadable { .. })
    }

    /// Its name on the wire (and in metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Failed { .. } => "failed",
            Outcome::Deferred { .. } => "deferred",
            Outcome::Throttled { .. } => "throttled",
            Outcome::Unknown { .. } => "unknown",
            Outcome::AccountStop { .. } => "account_stop",
            Outcome::Released => "released",
            Outcome::Unreadable { .. } => "unreadable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecipientOutcome {
    pub recipient_id: i64,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// When the request was started (sender's clock).
    pub at: Millis,
    /// How long the provider took to answer (one batched request answers for all of its messages);
    /// absent when no request was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("work source unavailable: {0}")]
    Unavailable(String),
    #[error("lease {0} is no longer held")]
    LeaseLost(String),
}

/// Where a sender gets work and reports outcomes: the conductor, in-process or over HTTP.
#[async_trait]
pub trait WorkSource: Send + Sync + 'static {
    async fn lease(&self, want: usize) -> Result<LeaseReply, WorkError>;
    /// Reports outcomes for some of a lease's recipients; `last` closes the lease (every recipient not
    /// yet reported is released).
    async fn report(
        &self,
        lease_id: &str,
        outcomes: Vec<RecipientOutcome>,
        last: bool,
    ) -> Result<(), WorkError>;
}
