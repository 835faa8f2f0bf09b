//! RFC 9457 problem details: every error the API answers, with a stable `type` and a human `detail`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::validate::{FieldError, Invalid};
use crate::engine::ingest::{Cut, ImportError};
use crate::store::StoreError;

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn bad_json(e: &serde_json::Error) -> Self {
        // Malformed bytes are a 400; well-formed JSON of the wrong shape is a 422.
        let (status, kind, title) = if e.is_data() {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/validation",
                "The campaign is not valid",
            )
        } else {
            (
                StatusCode::BAD_REQUEST,
                "/problems/invalid-json",
                "The request body is not valid JSON",
            )
        };
        Self::new(
            status,
            kind,
            title,
            format!("line {}, column {}: {e}", e.line(), e.column()),
        )
    }

    /// [`Problem::bad_json`] naming where in the document it went wrong (`per_minute`,
    /// `recipients[3].email`), so a wrong type is as easy to find as a missing field.
    pub fn bad_json_at(e: &serde_path_to_error::Error<serde_json::Error>) -> Self {
        let mut p = Self::bad_json(e.inner());
        let path = e.path().to_string();
        if e.inner().is_data() && path != "." {
            p.detail = format!("{path}: {}", p.detail);
        }
        p
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "/problems/payload-too-large",
            "The request body is too large",
            format!(
                "the body exceeds the configured limit of {limit} bytes (server.max_body_bytes)"
            ),
        )
    }

    /// 413 for a route with a fixed limit of its own (`what` takes at most `limit` bytes).
    pub fn too_large_for(what: &str, limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "/problems/payload-too-large",
            "The request body is too large",
            format!("{what} takes at most {limit} bytes"),
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "/problems/not-found",
            "Not found",
            detail,
        )
    }

    pub fn bad_query(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "/problems/invalid-query",
            "Invalid query parameter",
            detail,
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "/problems/internal",
            "Internal error",
            "the server could not complete the request; it has been logged",
        )
    }
}

impl From<Invalid> for Problem {
    fn from(e: Invalid) -> Self {
        let detail = e.to_string();
        let (kind, title) = match &e {
            Invalid::UnknownTemplate(_) => ("/problems/unknown-template", "No such template"),
            Invalid::TemplateSyntax(_) => {
                ("/problems/template-syntax", "The template does not compile")
            }
            Invalid::NoRecipients => ("/problems/no-recipients", "The recipient list is empty"),
            Invalid::Csv(_) => ("/problems/invalid-csv", "The recipients CSV is not valid"),
            Invalid::Fields(_) => ("/problems/validation", "The campaign is not valid"),
        };
        let mut p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, kind, title, detail);
        if let Invalid::Fields(errors) = e {
            p.errors = errors;
        }
        p
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Problem::not_found(format!("no campaign {id}")),
            StoreError::Conflict(why) => Problem::new(
                StatusCode::CONFLICT,
                "/problems/conflict",
                "Not possible in this state",
                why,
            ),
            other => {
                tracing::error!(error = %other, "store error");
                Problem::internal()
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

impl From<Cut> for Problem {
    fn from(c: Cut) -> Self {
        match c {
            Cut::TooLarge(limit) => Problem::too_large_for(
                "a recipient list upload (server.max_upload_bytes)",
                limit as usize,
            ),
            Cut::Broken(why) => Problem::new(
                StatusCode::BAD_REQUEST,
                "/problems/upload-cut-off",
                "The upload ended before its end",
                format!("the recipient list did not arrive whole: {why}; nothing was stored"),
            ),
        }
    }
}

impl From<ImportError> for Problem {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Invalid(e) => e.into(),
            ImportError::Store(e) => e.into(),
            ImportError::Parser => Problem::internal(),
        }
    }
}
