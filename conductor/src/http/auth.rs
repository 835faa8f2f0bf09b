//! Bearer tokens for the API: `[server] api_tokens` holds SHA-256 digests of the tokens (never the
//! tokens), and when any are set every `/v1` route and the event stream require one. The config is
//! read at each request, so adding or revoking a token is a config edit away. Routes with their own
//! proof stay as they are: provider webhooks (signatures), one-click unsubscribe (the link's HMAC),
//! the worker API (the workers' secret).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::http::problem::{Problem, ProblemType};
use crate::http::service::Service;

/// `sha256:` and the hex digest of `token`, as `[server] api_tokens` holds it.
pub fn digest(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Whether `path` with `method` needs a token (when tokens are configured at all): everything but the
/// routes with proofs of their own and the few reads that say nothing about campaigns or recipients
/// (health, metrics, the API description and the dashboard's page, which asks for a token itself).
pub fn guarded(method: &Method, path: &str) -> bool {
    let own_proof = path.starts_with("/v1/feedback/")
        || path.starts_with("/u/")
        || path.starts_with("/v/")
        || path.starts_with("/internal/");
    if own_proof {
        return false;
    }
    let reads = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let open = matches!(path, "/" | "/healthz" | "/metrics" | "/openapi.json");
    !(reads && open)
}

/// Whether the `Authorization` header carries one of `tokens` (digests), compared in constant time.
pub fn allows(tokens: &[String], authorization: Option<&str>) -> bool {
    let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let d = digest(given.trim());
    tokens.iter().fold(false, |ok, t| {
        ok | crate::domain::secret::same(t.to_ascii_lowercase().as_bytes(), d.as_bytes())
    })
}

pub async fn require_token(State(svc): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let tokens = svc.work.config.borrow().server.api_tokens.clone();
    if tokens.is_empty() || !guarded(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if allows(&tokens, given) {
        return next.run(req).await;
    }
    let mut r = Problem::new(
        StatusCode::UNAUTHORIZED,
        ProblemType::Unauthorised,
        "Token required",
        "this route needs `Authorization: Bearer TOKEN` with a token listed in [server] api_tokens",
    )
    .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"conductor\""),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_digest_only() {
        let tokens = vec![digest("s3cret-token"), digest("other")];
        assert!(allows(&tokens, Some("Bearer s3cret-token")));
        assert!(!allows(&tokens, Some("Bearer s3cret-tokeN")));
        assert!(
            !allows(&tokens, Some(&format!("Bearer {}", tokens[0]))),
            "the digest is no token"
        );
        assert!(!allows(&tokens, Some("Basic s3cret-token")));
        assert!(!allows(&tokens, None));
        assert!(crate::config::check_entry(&tokens[0]).is_ok());
        assert!(crate::config::check_entry("s3cret-token")
            .unwrap_err()
            .contains("sha256:"));
        assert!(crate::config::check_entry("sha256:abc")
            .unwrap_err()
            .contains("64 hex"));
    }

    #[test]
    fn what_needs_a_token() {
        assert!(guarded(&Method::POST, "/v1/campaigns"));
        assert!(guarded(&Method::PUT, "/v1/campaigns/c1"));
        assert!(guarded(&Method::GET, "/v1/campaigns/c1/events"));
        assert!(guarded(&Method::GET, "/v1/campaigns/c1"));
        assert!(guarded(&Method::GET, "/v1/campaigns/c1/recipients"));
        assert!(guarded(&Method::GET, "/v1/governor"));
        assert!(!guarded(&Method::GET, "/healthz"));
        assert!(!guarded(&Method::GET, "/metrics"));
        assert!(guarded(&Method::POST, "/healthz"));
        assert!(!guarded(&Method::POST, "/v1/feedback/mailgun"));
        assert!(!guarded(&Method::POST, "/u/abc"));
        assert!(!guarded(&Method::GET, "/v/abc"));
        assert!(!guarded(&Method::POST, "/internal/v1/leases"));
    }
}
