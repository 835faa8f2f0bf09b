//! The REST API (v1).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::problem::Problem;
use crate::service::Service;
use crate::store::Action;
use crate::validate::{self, CampaignRequest, Row};

pub fn router(service: Arc<Service>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(dashboard))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    include_str!("openapi.json"),
                )
            }),
        )
        // The one route with large bodies; every other is held to a small limit below.
        .route(
            "/v1/campaigns",
            post(create_campaign)
                .layer(DefaultBodyLimit::max(max_body_bytes))
                .get(list_campaigns),
        )
        .route("/v1/campaigns/{id}", get(get_campaign).put(update_campaign))
        .route("/v1/campaigns/{id}/plan", get(crate::governor_api::plan))
        .route("/v1/campaigns/{id}/events", get(crate::progress::events))
        .route("/metrics", get(metrics))
        .route("/v1/governor", get(crate::governor_api::governor))
        .route("/v1/campaigns/{id}/recipients", get(list_recipients))
        .route("/v1/campaigns/{id}/retry", post(retry))
        .route("/v1/campaigns/{id}/{action}", post(act))
        .route("/v1/minutes", get(minutes))
        .merge(crate::workers_api::router())
        .merge(crate::feedback_api::router())
        .merge(crate::unsubscribe_api::router())
        .fallback(|| async { Problem::not_found("no such resource") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "/problems/method-not-allowed",
                "Method not allowed",
                "this resource does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(crate::body::API))
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            crate::auth::require_token,
        ))
        // Outermost: a foreign Host or a cross-site post is refused before anything else runs.
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            crate::site::check,
        ))
        .with_state(service)
}

async fn create_campaign(
    State(svc): State<Arc<Service>>,
    req: Request,
) -> Result<Response, Problem> {
    let limit = svc.max_body_bytes;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (campaign, rows) = if content_type.starts_with("application/json") {
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| Problem::too_large(limit))?;
        let mut c: CampaignRequest =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&bytes))
                .map_err(|e| Problem::bad_json_at(&e))?;
        let recipients = c.recipients.take().ok_or_else(|| {
            missing(
                "recipients",
                "`recipients` is required (or send multipart/form-data with a recipients CSV part)",
            )
        })?;
        (c, validate::json_rows(recipients))
    } else if content_type.starts_with("multipart/form-data") {
        read_multipart(req, limit).await?
    } else {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "/problems/unsupported-media-type",
            "Unsupported media type",
            "send application/json, or multipart/form-data with `campaign` (JSON) and `recipients` (CSV) parts",
        ));
    };
    let (created, warnings) = svc.create(campaign, rows).await?;
    let location = format!("/v1/campaigns/{}", created.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(Created {
            campaign: created,
            warnings,
        }),
    )
        .into_response())
}

#[derive(serde::Serialize)]
struct Created {
    #[serde(flatten)]
    campaign: crate::store::Campaign,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

fn missing(field: &str, detail: &str) -> Problem {
    validate::Invalid::Fields(vec![validate::FieldError {
        field: field.into(),
        message: detail.into(),
    }])
    .into()
}

async fn read_multipart(
    req: Request<Body>,
    limit: usize,
) -> Result<(CampaignRequest, Vec<Row>), Problem> {
    let part_error = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::too_large(limit)
        } else {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "/problems/invalid-multipart",
                "The multipart body is not valid",
                e.body_text(),
            )
        }
    };
    let mut multipart = Multipart::from_request(req, &()).await.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "/problems/invalid-multipart",
            "The multipart body is not valid",
            e.body_text(),
        )
    })?;
    let (mut campaign, mut csv) = (None, None);
    while let Some(field) = multipart.next_field().await.map_err(part_error)? {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(part_error)?;
        match name.as_str() {
            "campaign" => {
                campaign = Some(
                    serde_path_to_error::deserialize::<_, CampaignRequest>(
                        &mut serde_json::Deserializer::from_slice(&bytes),
                    )
                    .map_err(|e| Problem::bad_json_at(&e))?,
                )
            }
            "recipients" => csv = Some(bytes),
            other => {
                return Err(missing(
                    other,
                    &format!("unexpected part `{other}`: send `campaign` and `recipients`"),
                ))
            }
        }
    }
    let campaign =
        campaign.ok_or_else(|| missing("campaign", "the `campaign` JSON part is required"))?;
    if campaign.recipients.is_some() {
        return Err(missing(
            "recipients",
            "give recipients either in the CSV part or in the JSON, not both",
        ));
    }
    let csv = csv.ok_or_else(|| missing("recipients", "the `recipients` CSV part is required"))?;
    let rows = validate::parse_csv(&csv)?;
    Ok((campaign, rows))
}

async fn list_campaigns(State(svc): State<Arc<Service>>) -> Result<Response, Problem> {
    let campaigns = svc.store.campaigns().await?;
    Ok(Json(serde_json::json!({ "campaigns": campaigns })).into_response())
}

async fn get_campaign(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let json = svc.work.views.get(&svc, &id).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response())
}

async fn act(
    State(svc): State<Arc<Service>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let action = match action.as_str() {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "cancel" => Action::Cancel,
        other => {
            return Err(Problem::not_found(format!(
                "no action {other:?}: use pause, resume or cancel"
            )))
        }
    };
    Ok(Json(svc.act(&id, action).await?).into_response())
}

const STATES: &[&str] = &[
    "pending",
    "rendered",
    "leased",
    "sent",
    "failed",
    "deferred",
    "unknown",
    "suppressed",
    "cancelled",
];

#[derive(Deserialize)]
struct RecipientsQuery {
    state: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /v1/campaigns/{id}/recipients?state=unknown&after=ID&limit=N`: a page in id order; the next
/// page starts after the last id.
async fn list_recipients(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    query: Result<Query<RecipientsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    // Numbers that are not numbers get a problem document, not axum's plain-text rejection.
    let Query(q) = query.map_err(|e| Problem::bad_query(e.body_text()))?;
    if let Some(s) = q.state.as_deref().filter(|s| !STATES.contains(s)) {
        return Err(Problem::bad_query(format!(
            "`state` {s:?} is not one of {}",
            STATES.join(", ")
        )));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad_query("`limit` must be between 1 and 1000"));
    }
    let page = svc
        .store
        .recipients(&id, q.state.as_deref(), q.after.unwrap_or(-1), limit)
        .await?;
    let next = (page.len() == limit as usize)
        .then(|| page.last().map(|r| r.id))
        .flatten();
    Ok(Json(serde_json::json!({ "recipients": page, "next_after": next })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryRequest {
    states: Vec<String>,
}

/// `POST /v1/campaigns/{id}/retry` with `{"states": ["unknown"]}`: sends those recipients again.
/// For `unknown` this may mail someone twice; that is why it is only ever done on request.
async fn retry(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let mut req: RetryRequest = serde_json::from_slice(&body).map_err(|e| Problem::bad_json(&e))?;
    // Each state is one statement in the writer: the same state twice is once, and a list longer
    // than there are states is refused unread.
    if req.states.len() > STATES.len() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
            "Invalid retry request",
            format!("`states` lists at most {} states", STATES.len()),
        ));
    }
    req.states.sort();
    req.states.dedup();
    if req.states.is_empty()
        || req
            .states
            .iter()
            .any(|s| !crate::store::RETRYABLE.contains(&s.as_str()))
    {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
            "Invalid retry request",
            format!(
                "`states` must list some of {}",
                crate::store::RETRYABLE.join(", ")
            ),
        ));
    }
    let moved = svc
        .store
        .retry(&id, &req.states, svc.work.clock.now_ms())
        .await?;
    svc.work.views.forget(&id);
    svc.work.wake.notify_one();
    tracing::info!(campaign = %id, recipients = moved, states = ?req.states, "recipients queued again on request");
    Ok(
        Json(serde_json::json!({ "requeued": moved, "campaign": svc.store.campaign(&id).await? }))
            .into_response(),
    )
}

/// `PUT /v1/campaigns/{id}`: `{"per_minute": 1000 | null, "priority": 3}`; either may be left out.
/// A cap applies from the next calendar minute, like every cap change.
async fn update_campaign(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&body).map_err(|e| Problem::bad_json(&e))?;
    let mut errors = Vec::new();
    let mut per_minute = None;
    let mut priority = None;
    let number = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    for (k, v) in &fields {
        match k.as_str() {
            "per_minute" if v.is_null() => per_minute = Some(None),
            "per_minute" => match number(v) {
                Some(n) => per_minute = Some(Some(n)),
                None => errors.push(validate::FieldError {
                    field: k.clone(),
                    message: format!("{v} is not a whole number of messages per minute, or null to remove the cap"),
                }),
            },
            "priority" => match number(v) {
                Some(n) => priority = Some(n),
                None => errors.push(validate::FieldError {
                    field: k.clone(),
                    message: format!("{v} is not a whole number"),
                }),
            },
            other => errors.push(validate::FieldError {
                field: other.to_string(),
                message: "is not a field that can be changed (per_minute, priority)".into(),
            }),
        }
    }
    errors.extend(validate::check_limits(per_minute.flatten(), priority));
    if !errors.is_empty() {
        return Err(validate::Invalid::Fields(errors).into());
    }
    if per_minute.is_none() && priority.is_none() {
        return Err(missing("per_minute", "give `per_minute` and/or `priority`"));
    }
    let c = svc
        .store
        .set_limits(&id, per_minute, priority, svc.work.clock.now_ms())
        .await?;
    svc.work.views.forget(&id);
    svc.work.wake.notify_one();
    Ok(Json(c).into_response())
}

#[derive(Deserialize)]
struct MinutesQuery {
    since: Option<String>,
    /// `global` (default), `domain:gmail.com`, `campaign:{id}`.
    scope: Option<String>,
}

async fn minutes(
    State(svc): State<Arc<Service>>,
    Query(q): Query<MinutesQuery>,
) -> Result<Response, Problem> {
    let since = match q.since {
        Some(s) => chrono::DateTime::parse_from_rfc3339(&s)
            .map_err(|e| {
                Problem::bad_query(format!(
                    "`since` must be an RFC 3339 time such as 2026-01-31T12:00:00Z: {e}"
                ))
            })?
            .timestamp_millis(),
        None => svc.work.clock.now_ms() - 60 * 60_000,
    };
    let minutes: Vec<_> = svc
        .store
        .minutes(q.scope.as_deref().unwrap_or("global"), since)
        .await?
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "minute": crate::store::rfc3339(m.minute_ms),
                "cap": m.cap, "granted": m.granted, "used": m.used, "sent": m.sent,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "minutes": minutes })).into_response())
}

/// Prometheus text format.
async fn metrics(State(svc): State<Arc<Service>>) -> Result<Response, Problem> {
    let view = svc
        .store
        .metrics_view(sender::clock::minute_start(svc.work.clock.now_ms()))
        .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        svc.work.metrics.render(&view),
    )
        .into_response())
}

/// The dashboard: one self-contained page (no CDN, works offline) that follows the event streams.
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("dashboard/index.html"),
    )
        .into_response()
}
