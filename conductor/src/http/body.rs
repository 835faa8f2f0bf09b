//! Request bodies, read only once the request has shown whatever proof it carries in its headers, and
//! never past the limit of the route. A route's limit is what its real callers send, with room to
//! spare: a webhook event is a few KiB, a worker's report at most a batch of outcomes.

use axum::body::{Body, Bytes};

use crate::http::problem::Problem;

/// Routes of the API that take small JSON documents (PUT, retry, actions).
pub const API: usize = 64 * 1024;
/// The `campaign` part of a multipart creation: its fields, with an inline template.
pub const CAMPAIGN_PART: usize = 4 * 1024 * 1024;
/// One-click unsubscribe: `List-Unsubscribe=One-Click` and little else.
pub const UNSUBSCRIBE: usize = 16 * 1024;
/// A provider's webhook post: Mailgun and Postmark send one event, SendGrid a batch of them,
/// SNS at most a 256 KiB message in its envelope.
pub const WEBHOOK: usize = 1024 * 1024;
/// A worker's request for work (a lease, a render claim).
pub const WORKER_SMALL: usize = 16 * 1024;
/// A worker's report: the outcomes of a lease, or a batch's render failures with their reasons.
pub const WORKER_REPORT: usize = 32 * 1024 * 1024;

/// The whole body, or 413 naming the limit once more than `limit` bytes arrived (the rest is never
/// read).
pub async fn read(body: Body, limit: usize, what: &str) -> Result<Bytes, Problem> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Problem::too_large_for(what, limit))
}
