//! RFC 9457 problem details: every error the API answers, with a stable `type` and a human `detail`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::validate::{FieldError, Invalid};
use crate::engine::ingest::{Cut, ImportError};
use crate::store::StoreError;

/// Declares the problem types once: the enum, its list and each one's URI.
macro_rules! problem_types {
    ($($variant:ident => $uri:literal),* $(,)?) => {
        /// Every problem `type` the API answers: one spelling each, listed in the OpenAPI document.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ProblemType {
            $($variant,)*
        }

        impl ProblemType {
            pub const ALL: &'static [ProblemType] = &[$(Self::$variant,)*];

            /// The `type` URI, relative to the API's base.
            pub fn uri(self) -> &'static str {
                match self {
                    $(Self::$variant => $uri,)*
                }
            }
        }
    };
}

problem_types! {
    Validation => "/problems/validation",
    UploadCutOff => "/problems/upload-cut-off",
    InvalidJson => "/problems/invalid-json",
    TemplateSyntax => "/problems/template-syntax",
    UnknownTemplate => "/problems/unknown-template",
    InvalidCsv => "/problems/invalid-csv",
    InvalidQuery => "/problems/invalid-query",
    InvalidMultipart => "/problems/invalid-multipart",
    PayloadTooLarge => "/problems/payload-too-large",
    UnsupportedMediaType => "/problems/unsupported-media-type",
    NotFound => "/problems/not-found",
    MethodNotAllowed => "/problems/method-not-allowed",
    Conflict => "/problems/conflict",
    Unauthorised => "/problems/unauthorised",
    HostNotAllowed => "/problems/host-not-allowed",
    CrossSite => "/problems/cross-site",
    BadSignature => "/problems/bad-signature",
    StaleWebhook => "/problems/stale-webhook",
    ReplayedWebhook => "/problems/replayed-webhook",
    FeedbackDisabled => "/problems/feedback-disabled",
    WorkersDisabled => "/problems/workers-disabled",
    NoRecipients => "/problems/no-recipients",
    LeaseLost => "/problems/lease-lost",
    RenderGone => "/problems/render-gone",
    Unavailable => "/problems/unavailable",
    RateLimited => "/problems/rate-limited",
    Internal => "/problems/internal",
}

impl Serialize for ProblemType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.uri())
    }
}

impl schemars::JsonSchema for ProblemType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ProblemType".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let uris: Vec<&str> = Self::ALL.iter().map(|t| t.uri()).collect();
        schemars::json_schema!({
            "description": "The problem's kind: a URI relative to the API's base.",
            "type": "string",
            "enum": uris,
        })
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: ProblemType,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// One entry per field or row that is wrong, when there are such.
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
        kind: ProblemType,
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
                ProblemType::Validation,
                "The campaign is not valid",
            )
        } else {
            (
                StatusCode::BAD_REQUEST,
                ProblemType::InvalidJson,
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
            ProblemType::PayloadTooLarge,
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
            ProblemType::PayloadTooLarge,
            "The request body is too large",
            format!("{what} takes at most {limit} bytes"),
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ProblemType::NotFound,
            "Not found",
            detail,
        )
    }

    pub fn bad_query(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ProblemType::InvalidQuery,
            "Invalid query parameter",
            detail,
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ProblemType::Internal,
            "Internal error",
            "the server could not complete the request; it has been logged",
        )
    }
}

impl From<Invalid> for Problem {
    fn from(e: Invalid) -> Self {
        let detail = e.to_string();
        let (kind, title) = match &e {
            Invalid::UnknownTemplate(_) => (ProblemType::UnknownTemplate, "No such template"),
            Invalid::TemplateSyntax(_) => {
                (ProblemType::TemplateSyntax, "The template does not compile")
            }
            Invalid::NoRecipients => (ProblemType::NoRecipients, "The recipient list is empty"),
            Invalid::Csv(_) => (ProblemType::InvalidCsv, "The recipients CSV is not valid"),
            Invalid::Fields(_) => (ProblemType::Validation, "The campaign is not valid"),
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
            e @ StoreError::NoRecipient(..) => Problem::not_found(e.to_string()),
            StoreError::Conflict(why) => Problem::new(
                StatusCode::CONFLICT,
                ProblemType::Conflict,
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
                ProblemType::UploadCutOff,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_type_is_spelled_once_and_listed_in_the_api_description() {
        let doc = crate::http::openapi::document();
        let mut seen = std::collections::HashSet::new();
        for &t in ProblemType::ALL {
            assert!(seen.insert(t.uri()), "{} twice", t.uri());
            assert!(doc.contains(t.uri()), "{} is not in openapi.json", t.uri());
        }
        let p = Problem::new(
            StatusCode::UNAUTHORIZED,
            ProblemType::Unauthorised,
            "t",
            "d",
        );
        assert_eq!(
            serde_json::to_value(&p).unwrap()["type"],
            "/problems/unauthorised"
        );
    }
}
