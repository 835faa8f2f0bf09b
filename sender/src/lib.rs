//! Rendered batch → mail provider, paced inside the minute budget the conductor granted.
//!
//! This crate owns the send contract: a [`SendLease`] (which recipients, how many tokens, when each
//! may be spent), the [`Outcome`] of each recipient, and the [`WorkSource`] a sender leases from.

pub mod clock;
pub mod config;
pub mod lease;
pub mod pacing;
pub mod provider;
pub mod remote;
pub mod safety;
pub mod worker;

pub use clock::{Clock, ManualClock, Millis, SystemClock};
pub use lease::{LeaseReply, Outcome, RecipientOutcome, SendLease, WorkError, WorkSource};
pub use provider::{OutgoingMessage, Provider};
pub use worker::{Sender, SenderConfig, SenderError, Step};
