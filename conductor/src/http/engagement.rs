//! `GET /o/{token}` (the open pixel) and `GET /c/{token}?u={target}` (a tracked link): each
//! records the event for the recipient its signed token names, a person's or a machine's, and
//! answers at once — a transparent GIF, or a redirect to the target. A click's target is inside
//! its signature, so a link cannot be made to lead anywhere its message did not; a tampered one
//! gets a page saying so, never a redirect.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::domain::engagement::{agent, Agent, Event, Kind};
use crate::domain::unsubscribe::{Purpose, Subscriber};
use crate::http::service::Service;
use crate::http::unsubscribe::page;

pub fn router() -> Router<Arc<Service>> {
    Router::new()
        .route("/o/{token}", get(open))
        .route("/c/{token}", get(click))
}

/// A 1×1 transparent GIF (43 bytes).
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

async fn open(
    State(svc): State<Arc<Service>>,
    method: Method,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let links = svc.work.config.borrow().unsubscribe.links();
    let Some(who) = links.and_then(|l| l.verify_for(Purpose::Open, &token)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    record(&svc, who, Kind::Open, None, &method, &headers).await;
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/gif"),
            // Every open asks again: a cached pixel is an open nobody sees.
            (
                header::CACHE_CONTROL,
                "no-store, no-cache, must-revalidate, private",
            ),
        ],
        PIXEL,
    )
        .into_response()
}

#[derive(Deserialize)]
struct Target {
    u: Option<String>,
}

async fn click(
    State(svc): State<Arc<Service>>,
    method: Method,
    headers: HeaderMap,
    Path(token): Path<String>,
    Query(q): Query<Target>,
) -> Response {
    let links = svc.work.config.borrow().unsubscribe.links();
    let verified = q.u.as_deref().and_then(|u| {
        let lower = u.get(..8).unwrap_or(u).to_ascii_lowercase();
        let web = lower.starts_with("https://") || lower.starts_with("http://");
        web.then(|| links?.verify_click(&token, u).map(|who| (who, u)))
            .flatten()
    });
    let Some((who, target)) = verified else {
        return page(
            StatusCode::NOT_FOUND,
            "Link not valid",
            "<p>This link is not valid. Use the link from the message itself.</p>",
        );
    };
    let target = target.to_string();
    let location = ascii(&target);
    record(&svc, who, Kind::Click, Some(target), &method, &headers).await;
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location.as_str()),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
    )
        .into_response()
}

/// Records the event; a store that cannot take it now loses this one event, not the recipient's
/// page or redirect.
async fn record(
    svc: &Service,
    who: Subscriber,
    kind: Kind,
    url: Option<String>,
    method: &Method,
    headers: &HeaderMap,
) {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let event = Event {
        campaign_id: who.campaign_id,
        recipient_id: who.recipient_id,
        kind,
        url,
        machine: matches!(agent(method == Method::HEAD, ua), Agent::Machine(_)),
        at_ms: svc.work.clock.now_ms(),
    };
    if let Err(e) = svc.store.record_engagement(&event).await {
        tracing::warn!(campaign = %event.campaign_id, kind = kind.as_str(), error = %e, "engagement not recorded");
    }
}

/// A header can carry only visible ASCII: anything else in the target (an IRI's letters, a
/// space) percent-encoded, as a browser would request it.
fn ascii(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for &b in url.as_bytes() {
        if (0x21..0x7f).contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
