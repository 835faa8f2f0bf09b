//! The REST API (v1).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::domain::recipient::RecipientState;
use crate::domain::scope::Scope;
use crate::domain::validate::{self, CampaignRequest};
use crate::engine::ingest::{self, ListFormat, Source};
use crate::http::body;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::payloads::{
    CampaignList, Created, MinuteList, RecipientPage, Requeued, RetryRequest,
};
use crate::http::problem::{Problem, ProblemType};
use crate::http::service::{Open, Service};
use crate::store::{Action, Campaign, IdempotencyKey, Status};

pub fn router(service: Arc<Service>) -> Router {
    // The routes that take a recipient list stream it, counting against `max_upload_bytes`
    // themselves (an inline JSON list against `max_body_bytes`); every other is held to a small
    // limit below.
    let upload =
        DefaultBodyLimit::max(usize::try_from(service.max_upload_bytes).unwrap_or(usize::MAX));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(dashboard))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    crate::http::openapi::document(),
                )
            }),
        )
        .route(
            "/v1/campaigns",
            post(create_campaign).layer(upload).get(list_campaigns),
        )
        .route("/v1/campaigns/{id}", get(get_campaign).put(update_campaign))
        .route("/v1/campaigns/{id}/plan", get(crate::http::governor::plan))
        .route(
            "/v1/campaigns/{id}/events",
            get(crate::http::stream::events),
        )
        .route("/metrics", get(metrics))
        .route("/v1/governor", get(crate::http::governor::governor))
        .route(
            "/v1/campaigns/{id}/recipients",
            get(list_recipients).put(put_recipients).layer(upload),
        )
        .route("/v1/campaigns/{id}/start", post(start_campaign))
        .route("/v1/campaigns/{id}/retry", post(retry))
        .route("/v1/campaigns/{id}/{action}", post(act))
        .route("/v1/minutes", get(minutes))
        .merge(crate::http::preview::router(upload))
        .merge(crate::http::test_send::router())
        .merge(crate::http::workers::router())
        .merge(crate::http::feedback::router())
        .merge(crate::http::unsubscribe::router())
        .merge(crate::http::webview::router())
        .merge(crate::http::engagement::router())
        .fallback(|| async { Problem::not_found("no such resource") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ProblemType::MethodNotAllowed,
                "Method not allowed",
                "this resource does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(body::API))
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            crate::http::auth::require_token,
        ))
        // Outermost: a foreign Host or a cross-site post is refused before anything else runs.
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            crate::http::site::check,
        ))
        .with_state(service)
}

/// `POST /v1/campaigns`: a campaign with its list inline (JSON, read whole up to
/// `max_body_bytes`), or in a multipart body whose `campaign` JSON part comes first and whose
/// `recipients` part (CSV, or NDJSON by its media type) is streamed; or a `draft` with no list.
/// With an `Idempotency-Key`, a retried request returns the first one's campaign.
async fn create_campaign(
    State(svc): State<Arc<Service>>,
    req: Request,
) -> Result<Response, Problem> {
    let key = idempotency_key(req.headers())?;
    let content_type = body::content_type(&req);
    let (campaign, warnings, replayed) = if content_type.starts_with("application/json") {
        let limit = svc.max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| Problem::too_large(limit))?;
        let mut c: CampaignRequest =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&bytes))
                .map_err(|e| Problem::bad_json_at(&e))?;
        let key = key.map(|k| keyed(k, &bytes));
        drop(bytes);
        match (c.recipients.take(), c.draft) {
            (None, true) => match svc.open(c, Status::Draft, key).await? {
                Open::New { campaign, .. } => (campaign, Vec::new(), false),
                Open::Replay(campaign) => (campaign, Vec::new(), true),
            },
            (Some(_), true) => {
                return Err(missing(
                    "recipients",
                    "a draft has no list yet: give it one with PUT /v1/campaigns/{id}/recipients",
                ))
            }
            (None, false) => {
                return Err(missing(
                    "recipients",
                    "`recipients` is required (or send multipart/form-data with a recipients part, or `draft`: true)",
                ))
            }
            (Some(recipients), false) => {
                svc.create(c, validate::json_rows(recipients), key).await?
            }
        }
    } else if content_type.starts_with("multipart/form-data") {
        create_multipart(&svc, req, key).await?
    } else {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemType::UnsupportedMediaType,
            "Unsupported media type",
            "send application/json, or multipart/form-data with `campaign` (JSON) and `recipients` (CSV or NDJSON) parts",
        ));
    };
    let location = format!("/v1/campaigns/{}", campaign.id);
    let mut response = (
        if replayed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        [(header::LOCATION, location)],
        Json(Created { campaign, warnings }),
    )
        .into_response();
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            header::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

fn missing(field: &str, detail: &str) -> Problem {
    validate::Invalid::Fields(vec![validate::FieldError {
        field: field.into(),
        message: detail.into(),
    }])
    .into()
}

/// The `Idempotency-Key` header, if given: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &header::HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_string()))
        }
        _ => Err(missing(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// The key with a digest of the request's campaign fields.
fn keyed(key: String, campaign_json: &[u8]) -> IdempotencyKey {
    use sha2::Digest;
    IdempotencyKey {
        key,
        fingerprint: format!("{:x}", sha2::Sha256::digest(campaign_json)),
    }
}

async fn create_multipart(
    svc: &Arc<Service>,
    req: Request<Body>,
    key: Option<String>,
) -> Result<(Campaign, Vec<String>, bool), Problem> {
    // Whatever ends the request early — a limit, a broken stream, a part out of place — the
    // campaign it opened is given up, so no half-made campaign is left listed.
    let mut opened_id = None;
    let made = read_multipart(svc, req, key, &mut opened_id).await;
    if made.is_err() {
        if let Some(id) = opened_id {
            svc.abandon(&id).await;
        }
    }
    made
}

async fn read_multipart(
    svc: &Arc<Service>,
    req: Request<Body>,
    key: Option<String>,
    opened_id: &mut Option<String>,
) -> Result<(Campaign, Vec<String>, bool), Problem> {
    let limit = svc.max_upload_bytes;
    let mut multipart = body::multipart(req).await?;
    let mut opened: Option<Open> = None;
    let mut done = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| body::multipart_problem(e, limit))?
    {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "campaign" if opened.is_none() => {
                let bytes =
                    body::read_part(field, "the `campaign` part", body::CAMPAIGN_PART, limit)
                        .await?;
                let c: CampaignRequest = serde_path_to_error::deserialize(
                    &mut serde_json::Deserializer::from_slice(&bytes),
                )
                .map_err(|e| Problem::bad_json_at(&e))?;
                if c.recipients.is_some() || c.draft {
                    return Err(missing(
                        "recipients",
                        "give recipients either in the recipients part or in the JSON, not both (and no `draft` with a list)",
                    ));
                }
                let key = key.clone().map(|k| keyed(k, &bytes));
                let open = svc.open(c, Status::Importing, key).await?;
                if let Open::New { campaign, .. } = &open {
                    *opened_id = Some(campaign.id.clone());
                }
                opened = Some(open);
            }
            "recipients" if done.is_none() => {
                let format = ListFormat::of_media_type(field.content_type().unwrap_or(""))
                    .ok_or_else(|| {
                        missing(
                            "recipients",
                            "the recipients part is CSV (text/csv) or NDJSON (application/x-ndjson)",
                        )
                    })?;
                match opened.take() {
                    None => {
                        return Err(missing(
                            "campaign",
                            "the `campaign` JSON part comes before the `recipients` part",
                        ))
                    }
                    Some(Open::Replay(c)) => {
                        // The list was stored by the first request: this copy is read and dropped.
                        let field = field.map(|c| c.map_err(|e| body::cut_of(e, limit)));
                        ingest::forward(field, mpsc::channel(1).0, limit).await?;
                        done = Some((c, Vec::new(), true));
                    }
                    Some(Open::New { campaign, rules }) => {
                        let (tx, rx) = mpsc::channel(16);
                        let (forwarded, imported) = tokio::join!(
                            ingest::forward(
                                field.map(|c| c.map_err(|e| body::cut_of(e, limit))),
                                tx,
                                limit
                            ),
                            svc.import(&campaign.id, rules, Source::Stream(format, rx))
                        );
                        if let Err(cut) = forwarded {
                            return Err(cut.into());
                        }
                        let imported = imported?;
                        // Only a body read to its end makes a campaign: a limit or a break found
                        // after the list's part must not leave its list cut short, and running.
                        match multipart.next_field().await {
                            Ok(None) => {}
                            Ok(Some(extra)) => {
                                let name = extra.name().unwrap_or_default().to_string();
                                return Err(missing(
                                    &name,
                                    &format!("unexpected part `{name}` after `recipients`"),
                                ));
                            }
                            Err(e) => return Err(body::multipart_problem(e, limit)),
                        }
                        let (c, warnings) = svc.finish(&campaign.id, imported, true).await?;
                        return Ok((c, warnings, false));
                    }
                }
            }
            other => {
                return Err(missing(
                    other,
                    &format!("unexpected part `{other}`: send `campaign`, then `recipients`"),
                ))
            }
        }
    }
    match (done, opened) {
        (Some(done), _) => Ok(done),
        (None, Some(Open::New { .. })) => {
            Err(missing("recipients", "the `recipients` part is required"))
        }
        (None, Some(Open::Replay(c))) => Ok((c, Vec::new(), true)),
        (None, None) => Err(missing("campaign", "the `campaign` JSON part is required")),
    }
}

/// `PUT /v1/campaigns/{id}/recipients`: a draft's list, replaced by the body (CSV, or NDJSON by
/// its media type), streamed. A problem anywhere leaves the draft with no list.
async fn put_recipients(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Problem> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = ListFormat::of_media_type(content_type).ok_or_else(|| {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemType::UnsupportedMediaType,
            "Unsupported media type",
            "send the list as text/csv or application/x-ndjson",
        )
    })?;
    let rules = svc.rules_of(&id).await?;
    svc.store.begin_upload(&id, svc.work.clock.now_ms()).await?;
    let (tx, rx) = mpsc::channel(16);
    let (forwarded, filled) = tokio::join!(
        ingest::forward(
            req.into_body()
                .into_data_stream()
                .map(|c| c.map_err(|e| ingest::Cut::Broken(e.to_string()))),
            tx,
            svc.max_upload_bytes
        ),
        svc.fill(&id, rules, Source::Stream(format, rx), false)
    );
    forwarded?;
    let (campaign, warnings) = filled?;
    Ok(Json(Created { campaign, warnings }).into_response())
}

async fn start_campaign(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(svc.start(&id).await?).into_response())
}

async fn list_campaigns(State(svc): State<Arc<Service>>) -> Result<Response, Problem> {
    let campaigns = svc.store.campaigns().await?;
    Ok(Json(CampaignList { campaigns }).into_response())
}

async fn get_campaign(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let json = crate::http::view::campaign_view(&svc, &id).await?;
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

/// States as a list for a message: `a, b, c`.
fn names(states: &[RecipientState]) -> String {
    states
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

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
    ApiQuery(q): ApiQuery<RecipientsQuery>,
) -> Result<Response, Problem> {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(RecipientState::parse(s).ok_or_else(|| {
            Problem::bad_query(format!(
                "`state` {s:?} is not one of {}",
                names(&RecipientState::ALL)
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad_query("`limit` must be between 1 and 1000"));
    }
    let page = svc
        .store
        .recipients(&id, state, q.after.unwrap_or(-1), limit)
        .await?;
    let next = (page.len() == limit as usize)
        .then(|| page.last().map(|r| r.id))
        .flatten();
    Ok(Json(RecipientPage {
        recipients: page,
        next_after: next,
    })
    .into_response())
}

/// `POST /v1/campaigns/{id}/retry` with `{"states": ["unknown"]}`: sends those recipients again.
/// For `unknown` this may mail someone twice; that is why it is only ever done on request.
async fn retry(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RetryRequest>,
) -> Result<Response, Problem> {
    let invalid = |detail: String| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemType::Validation,
            "Invalid retry request",
            detail,
        )
    };
    // Each state is one statement in the writer: the same state twice is once, and a list longer
    // than there are states is refused unread.
    if req.states.len() > RecipientState::ALL.len() {
        return Err(invalid(format!(
            "`states` lists at most {} states",
            RecipientState::ALL.len()
        )));
    }
    let some_of = || {
        invalid(format!(
            "`states` must list some of {}",
            names(&RecipientState::RETRYABLE)
        ))
    };
    let mut states = Vec::with_capacity(req.states.len());
    for s in &req.states {
        let s = RecipientState::parse(s)
            .filter(|s| RecipientState::RETRYABLE.contains(s))
            .ok_or_else(some_of)?;
        if !states.contains(&s) {
            states.push(s);
        }
    }
    if states.is_empty() {
        return Err(some_of());
    }
    let (moved, campaign) = svc.retry(&id, &states).await?;
    Ok(Json(Requeued {
        requeued: moved,
        campaign,
    })
    .into_response())
}

/// `PUT /v1/campaigns/{id}`: `{"per_minute": 1000 | null, "priority": 3}`; either may be left out.
/// A cap applies from the next calendar minute, like every cap change.
async fn update_campaign(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiJson(fields): ApiJson<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response, Problem> {
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
    Ok(Json(svc.set_limits(&id, per_minute, priority).await?).into_response())
}

#[derive(Deserialize)]
struct MinutesQuery {
    since: Option<String>,
    /// `global` (default), `domain:gmail.com`, `campaign:{id}`.
    scope: Option<String>,
}

async fn minutes(
    State(svc): State<Arc<Service>>,
    ApiQuery(q): ApiQuery<MinutesQuery>,
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
    let scope = match q.scope.as_deref() {
        None => Scope::Global,
        Some(s) => Scope::parse(s).ok_or_else(|| {
            Problem::bad_query("`scope` must be `global`, `test`, `domain:NAME` or `campaign:ID`")
        })?,
    };
    let minutes = svc.store.minutes(&scope, since).await?;
    Ok(Json(MinuteList { minutes }).into_response())
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
