//! `POST /v1/campaigns/{id}/test`: a campaign's message mailed to up to ten addresses, as a test.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use crate::domain::test_send::TestSendRequest;
use crate::engine::test_send::{self, TestSendError};
use crate::http::extract::ApiJson;
use crate::http::problem::{Problem, ProblemType};
use crate::http::service::Service;

pub fn router() -> Router<Arc<Service>> {
    Router::new().route("/v1/campaigns/{id}/test", post(test))
}

async fn test(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TestSendRequest>,
) -> Response {
    match test_send::send(&svc.work, &id, req).await {
        Ok(report) => Json(report).into_response(),
        Err(TestSendError::NoTokens { wanted, until }) => {
            let now = svc.work.clock.now_ms();
            let wait_s = ((until - now).max(0) + 999) / 1000;
            let mut response = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                ProblemType::RateLimited,
                "The sending budget of this minute is spent",
                format!(
                    "this minute has fewer than {wanted} of its tokens left (the per-minute cap is shared with the campaigns sending now); try again in {wait_s} s"
                ),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait_s.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            response
        }
        Err(e) => Problem::from(e).into_response(),
    }
}

impl From<TestSendError> for Problem {
    fn from(e: TestSendError) -> Self {
        match e {
            TestSendError::Invalid(e) => {
                let mut p = Problem::from(e);
                p.title = "The test send is not valid";
                p
            }
            TestSendError::Store(e) => Problem::from(e),
            e @ TestSendError::Provider(_) => {
                tracing::warn!(error = %e, "test send not possible");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ProblemType::Unavailable,
                    "The provider is not usable",
                    "the configured provider could not be set up; the server log says why",
                )
            }
            TestSendError::NoTokens { wanted, .. } => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                ProblemType::RateLimited,
                "The sending budget of this minute is spent",
                format!("this minute has fewer than {wanted} of its tokens left"),
            ),
            e @ TestSendError::Join(_) => {
                tracing::error!(error = %e, "test send failed");
                Problem::internal()
            }
        }
    }
}
