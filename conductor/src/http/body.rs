//! Request bodies, read only once the request has shown whatever proof it carries in its headers, and
//! never past the limit of the route. A route's limit is what its real callers send, with room to
//! spare: a webhook event is a few KiB, a worker's report at most a batch of outcomes.

use axum::body::{Body, Bytes};

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::StatusCode;

use crate::engine::ingest::Cut;
use crate::http::problem::{Problem, ProblemType};

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

/// The request's media type, lowercased; empty when it names none.
pub fn content_type(req: &Request) -> String {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A multipart/form-data body, its parts read one by one as they arrive.
pub async fn multipart(req: Request) -> Result<Multipart, Problem> {
    Multipart::from_request(req, &()).await.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            ProblemType::InvalidMultipart,
            "The multipart body is not valid",
            e.body_text(),
        )
    })
}

/// Why a multipart body stopped: its limit, or a broken stream.
pub fn cut_of(e: axum::extract::multipart::MultipartError, limit: u64) -> Cut {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Cut::TooLarge(limit)
    } else {
        Cut::Broken(e.body_text())
    }
}

pub fn multipart_problem(e: axum::extract::multipart::MultipartError, limit: u64) -> Problem {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Cut::TooLarge(limit).into()
    } else {
        Problem::new(
            StatusCode::BAD_REQUEST,
            ProblemType::InvalidMultipart,
            "The multipart body is not valid",
            e.body_text(),
        )
    }
}

/// A small part, whole, or 413 past `limit`.
pub async fn read_part(
    mut field: axum::extract::multipart::Field<'_>,
    what: &str,
    limit: usize,
    upload_limit: u64,
) -> Result<Vec<u8>, Problem> {
    let mut out = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| multipart_problem(e, upload_limit))?
    {
        if out.len() + chunk.len() > limit {
            return Err(Problem::too_large_for(what, limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
