//! `GET /v/{token}`: a recipient's message in a browser (`{{web_url}}`), while the campaign's
//! bodies are retained; a page that says so after. The token is signed like an unsubscribe
//! link's, for this purpose only, so it names one recipient and cannot be made to name another.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::domain::preview;
use crate::domain::unsubscribe::Purpose;
use crate::http::service::Service;
use crate::http::unsubscribe::page;
use crate::store::StoreError;

pub fn router() -> Router<Arc<Service>> {
    Router::new().route("/v/{token}", get(web_view))
}

/// The message's own HTML runs nothing and loads nothing but images and inline styles: a
/// campaign's HTML is shown, never trusted.
const POLICY: &str = "sandbox; default-src 'none'; img-src https: data:; style-src 'unsafe-inline'";

async fn web_view(State(svc): State<Arc<Service>>, Path(token): Path<String>) -> Response {
    let Some((links, limits)) = ({
        let config = svc.work.config.borrow();
        config
            .unsubscribe
            .links()
            .map(|l| (l, config.campaigns.render_limits()))
    }) else {
        return not_valid();
    };
    let Some(who) = links.verify_for(Purpose::WebView, &token) else {
        return not_valid();
    };
    let (id, rid) = (who.campaign_id, who.recipient_id);
    let input = match svc.store.message_input(&id, rid).await {
        Ok(input) => input,
        Err(StoreError::NotFound(_) | StoreError::NoRecipient(..)) => {
            return page(
                StatusCode::GONE,
                "Message no longer available",
                "<p>This message is no longer kept online. It is still in your mailbox.</p>",
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "web view not read");
            return try_again();
        }
    };
    let signed = (links.link(&id, rid), links.web_url(&id, rid));
    // Shown, not sent: opening it again in a browser is not an open, and its links go straight on.
    let shown =
        tokio::task::spawn_blocking(move || preview::stored(&input, limits, Some(signed), None))
            .await;
    match shown {
        Ok(Ok(message)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::CONTENT_SECURITY_POLICY, POLICY),
                (header::HeaderName::from_static("x-robots-tag"), "noindex"),
            ],
            message.html,
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::warn!(campaign = %id, recipient = rid, error = %e, "web view not rendered");
            page(
                StatusCode::GONE,
                "Message no longer available",
                "<p>This message cannot be shown online. It is still in your mailbox.</p>",
            )
        }
        Err(_) => try_again(),
    }
}

fn try_again() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "<p>The message could not be shown just now. Please try again in a moment.</p>",
    )
}

fn not_valid() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not valid",
        "<p>This link is not valid. Use the link from the message itself.</p>",
    )
}
