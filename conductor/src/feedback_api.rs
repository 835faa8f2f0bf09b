//! `POST /v1/feedback/{provider}`: delivery events from providers' webhooks. The body is read as
//! raw bytes and verified before anything is parsed for meaning.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use crate::feedback::{self, FeedbackError};
use crate::problem::Problem;
use crate::service::Service;

pub fn router() -> Router<Arc<Service>> {
    Router::new().route("/v1/feedback/mailgun", post(mailgun))
}

/// Mailgun retries anything but 200 and 406 for hours; 406 tells it to stop (stale or replayed).
async fn mailgun(
    State(svc): State<Arc<Service>>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let Some(key) = svc.feedback.mailgun.signing_key.as_deref() else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "/problems/feedback-disabled",
            "Mailgun feedback is not enabled",
            "set CONDUCTOR__FEEDBACK__MAILGUN__SIGNING_KEY to the webhook signing key",
        ));
    };
    let event = match feedback::mailgun(&body, key, svc.work.clock.now_ms()) {
        Ok(e) => e,
        Err(e @ FeedbackError::BadSignature) => {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "/problems/bad-signature",
                "Signature does not verify",
                e.to_string(),
            ))
        }
        Err(e @ FeedbackError::Stale { .. }) => {
            return Err(Problem::new(
                StatusCode::NOT_ACCEPTABLE,
                "/problems/stale-webhook",
                "Webhook too old",
                e.to_string(),
            ))
        }
        Err(FeedbackError::Ignored(_)) => return Ok(StatusCode::OK.into_response()),
        Err(e @ FeedbackError::Malformed(_)) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "/problems/validation",
                "Not a Mailgun webhook",
                e.to_string(),
            ))
        }
    };
    if svc
        .store
        .record_feedback(&event, svc.work.clock.now_ms())
        .await?
    {
        tracing::info!(provider = event.provider, event = event.kind.as_str(), email = %event.email, "feedback recorded");
        Ok(StatusCode::OK.into_response())
    } else {
        Err(Problem::new(
            StatusCode::NOT_ACCEPTABLE,
            "/problems/replayed-webhook",
            "Already received",
            format!("event {} was recorded before", event.key),
        ))
    }
}
