//! What runs on its own over the store: work hand-out and reconcile, render dispatch, lifecycle
//! events, list import, metrics, and the caches that pollers share.

pub mod dispatch;
pub mod events;
pub mod ingest;
pub mod metrics;
pub mod progress;
pub mod ses_intake;
pub mod test_send;
pub mod views;
pub mod work;
