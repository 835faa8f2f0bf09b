//! Request extractors whose rejections are our problem documents, not axum's plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::http::problem::{Problem, ProblemType};

/// A JSON request body, read within the route's limit: malformed bytes are a 400 naming the
/// position, the wrong shape a 422, a body over the limit a 413, each a problem document.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::too_large_for("a request body", crate::http::body::API)
            } else {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    ProblemType::InvalidJson,
                    "The request body could not be read",
                    e.body_text(),
                )
            }
        })?;
        json(&bytes).map(Self)
    }
}

/// A JSON document from a body already read (the worker API reads its bodies only after their
/// proof): 400 for malformed bytes, 422 for the wrong shape.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(bytes).map_err(|e| Problem::bad_json(&e))
}

/// A query string, parsed: one that does not fit `T` (a number that is not one, a parameter
/// given twice) is a 400 problem document naming it, not axum's plain-text rejection.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| Problem::bad_query(e.body_text()))
    }
}
