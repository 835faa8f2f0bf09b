//! `GET|POST /u/{token}`: RFC 8058 one-click unsubscribe. A POST unsubscribes at once, with no cookie,
//! redirect or login (mailbox providers post it on the user's behalf); a GET only shows a page with
//! the button, because link scanners and previews fetch every URL in a message.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::domain::feedback::{Event, Kind};
use crate::domain::unsubscribe::Subscriber;
use crate::http::service::Service;
use crate::store::StoreError;

pub fn router() -> Router<Arc<Service>> {
    Router::new().route("/u/{token}", get(confirm).post(unsubscribe))
}

/// A small page of this service's own, for recipients (unsubscribe, web view).
pub(crate) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{title}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}\
         button{{font:inherit;padding:.5rem 1.25rem}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

fn not_valid() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not valid",
        "<p>This unsubscribe link is not valid. Use the link from the most recent message.</p>",
    )
}

fn subscriber(svc: &Service, token: &str) -> Option<Subscriber> {
    svc.work.config.borrow().unsubscribe.links()?.verify(token)
}

/// Shows the button; changes nothing.
async fn confirm(State(svc): State<Arc<Service>>, Path(token): Path<String>) -> Response {
    if subscriber(&svc, &token).is_none() {
        return not_valid();
    }
    // The token is base64url and digits joined by dots (checked above): safe inside an attribute.
    page(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<p>Stop receiving these emails at this address?</p>\
             <form method=\"post\" action=\"/u/{token}\">\
             <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
             <button type=\"submit\">Unsubscribe</button></form>"
        ),
    )
}

async fn unsubscribe(
    State(svc): State<Arc<Service>>,
    Path(token): Path<String>,
    body: axum::body::Body,
) -> Response {
    let Some(who) = subscriber(&svc, &token) else {
        return not_valid();
    };
    // The link's signature is the proof; only then is the (tiny) body read.
    let body = match crate::http::body::read(body, crate::http::body::UNSUBSCRIBE, "an unsubscribe")
        .await
    {
        Ok(b) => b,
        Err(p) => return p.into_response(),
    };
    let now = svc.work.clock.now_ms();
    let row = match svc
        .store
        .recipients(
            &who.campaign_id,
            None,
            who.recipient_id.saturating_sub(1),
            1,
        )
        .await
    {
        Ok(rows) => rows.into_iter().find(|r| r.id == who.recipient_id),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe not recorded");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>We could not record your request just now. Please try again in a minute.</p>",
            );
        }
    };
    let Some(row) = row else {
        return not_valid();
    };
    let one_click = body.as_ref() == b"List-Unsubscribe=One-Click";
    let event = Event {
        key: format!("unsubscribe:{}:{}", who.campaign_id, who.recipient_id),
        provider: "list-unsubscribe",
        kind: Kind::Unsubscribe,
        email: row.email,
        campaign_id: Some(who.campaign_id.clone()),
        recipient_id: Some(who.recipient_id),
        detail: Some(if one_click { "one-click" } else { "link" }.into()),
    };
    match svc.store.record_feedback(&event, now).await {
        Ok(first) => {
            if first {
                tracing::info!(campaign = %who.campaign_id, recipient = who.recipient_id, "unsubscribed");
            }
            page(
                StatusCode::OK,
                "Unsubscribed",
                "<p>You will not receive these emails at this address any more.</p>",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe not recorded");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>We could not record your request just now. Please try again in a minute.</p>",
            )
        }
    }
}
