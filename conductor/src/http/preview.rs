//! Messages before they are sent: `POST /v1/preview` renders a campaign's message for one recipient
//! before the campaign exists, `GET /v1/campaigns/{id}/recipients/{rid}/message` a stored
//! campaign's message for one of its recipients.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::domain::preview::{self, PreviewRequest};
use crate::domain::validate::{self, Invalid, Row};
use crate::engine::ingest::{self, ListFormat};
use crate::http::body;
use crate::http::extract::ApiQuery;
use crate::http::problem::Problem;
use crate::http::service::Service;

pub fn router(upload: DefaultBodyLimit) -> Router<Arc<Service>> {
    Router::new()
        .route("/v1/preview", post(preview).layer(upload))
        .route(
            "/v1/campaigns/{id}/recipients/{rid}/message",
            axum::routing::get(stored),
        )
}

/// The campaign with an inline template is as large as the `campaign` part of a multipart create.
const LIMIT: usize = body::CAMPAIGN_PART;

/// `application/json`: a [`PreviewRequest`] with its `recipient`. `multipart/form-data`: the
/// request as a `preview` part, then the list as a create takes it in a `recipients` part, and the
/// message is rendered for its row `row`.
async fn preview(State(svc): State<Arc<Service>>, req: Request) -> Result<Response, Problem> {
    let content_type = body::content_type(&req);
    let (request, row) = if content_type.starts_with("multipart/form-data") {
        from_list(&svc, req).await?
    } else {
        let bytes = body::read(req.into_body(), LIMIT, "a preview request").await?;
        let request = parse(&bytes)?;
        let row = request.given()?;
        (request, row)
    };
    let (templates, limits, link, tracking) = {
        let config = svc.work.config.borrow();
        let links = config.unsubscribe.links();
        (
            config.campaigns.templates_dir.clone(),
            config.campaigns.render_limits(),
            links
                .as_ref()
                .map(|l| (l.preview_link(), l.preview_web_url())),
            links
                .as_ref()
                .and_then(|l| l.preview_tracking(request.campaign.track.into())),
        )
    };
    answer(move || preview::preview(&request.campaign, row, &templates, limits, link, tracking))
        .await
}

fn parse(bytes: &[u8]) -> Result<PreviewRequest, Problem> {
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
        .map_err(|e| Problem::bad_json_at(&e))
}

fn part_error(part: &str, message: impl Into<String>) -> Problem {
    Invalid::Fields(vec![validate::field(part, message)]).into()
}

/// The `preview` part and the row it asks for from the `recipients` part. The list is read up to
/// that row; the rest of it is read and dropped, never kept.
async fn from_list(svc: &Service, req: Request) -> Result<(PreviewRequest, Row), Problem> {
    let limit = svc.max_upload_bytes;
    let mut multipart = body::multipart(req).await?;
    let mut request: Option<PreviewRequest> = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| body::multipart_problem(e, limit))?
    {
        let name = field.name().unwrap_or_default().to_string();
        match (name.as_str(), &request) {
            ("preview", None) => {
                let bytes = body::read_part(field, "the `preview` part", LIMIT, limit).await?;
                request = Some(parse(&bytes)?);
            }
            ("recipients", Some(r)) => {
                let n = r.wanted()?;
                let format = ListFormat::of_media_type(field.content_type().unwrap_or(""))
                    .ok_or_else(|| {
                        part_error(
                            "recipients",
                            "the recipients part is CSV (text/csv) or NDJSON (application/x-ndjson)",
                        )
                    })?;
                let (tx, rx) = mpsc::channel(16);
                let (forwarded, found) = tokio::join!(
                    ingest::forward(
                        field.map(|c| c.map_err(|e| body::cut_of(e, limit))),
                        tx,
                        limit
                    ),
                    ingest::nth_row(format, rx, n)
                );
                forwarded?;
                let row = found?;
                return match multipart.next_field().await {
                    Ok(None) => Ok((request.take().expect("matched Some"), row)),
                    Ok(Some(extra)) => {
                        let name = extra.name().unwrap_or_default().to_string();
                        Err(part_error(
                            &name,
                            format!("unexpected part `{name}` after `recipients`"),
                        ))
                    }
                    Err(e) => Err(body::multipart_problem(e, limit)),
                };
            }
            ("recipients", None) => {
                return Err(part_error(
                    "preview",
                    "the `preview` JSON part comes before the `recipients` part",
                ))
            }
            (other, _) => {
                return Err(part_error(
                    other,
                    format!("unexpected part `{other}`: send `preview`, then `recipients`"),
                ))
            }
        }
    }
    match request {
        None => Err(part_error("preview", "the `preview` JSON part is required")),
        Some(_) => Err(part_error(
            "recipients",
            "the `recipients` part is required",
        )),
    }
}

/// Compiling and rendering a template is CPU work: done off the async threads.
async fn answer(
    render: impl FnOnce() -> Result<preview::Preview, Invalid> + Send + 'static,
) -> Result<Response, Problem> {
    let shown = tokio::task::spawn_blocking(render).await.map_err(|e| {
        tracing::error!(error = %e, "preview task failed");
        Problem::internal()
    })??;
    Ok(Json(shown).into_response())
}

/// `?tracking=`: a tracked campaign's message with the recipient's own tracked links and pixel
/// (`live`, as sent), or with stand-ins of the same shape that record nothing (`inert`), for a page
/// that shows the message to someone other than its recipient — the dashboard — where loading
/// the pixel or following a link would otherwise count as the recipient's open or click.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MessageQuery {
    tracking: Mode,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Live,
    Inert,
}

/// The message of recipient `rid` as its campaign sends it: rendered from the stored template and
/// that recipient's data, with its own signed unsubscribe link and, when the campaign tracks,
/// its tracked links and open pixel.
async fn stored(
    State(svc): State<Arc<Service>>,
    Path((id, rid)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<MessageQuery>,
) -> Result<Response, Problem> {
    let rid: i64 = rid
        .parse()
        .map_err(|_| Problem::not_found(format!("no recipient {rid:?}: ids are numbers")))?;
    let input = svc.store.message_input(&id, rid).await?;
    let (limits, link, tracking) = {
        let config = svc.work.config.borrow();
        let links = config.unsubscribe.links();
        (
            config.campaigns.render_limits(),
            links
                .as_ref()
                .map(|l| (l.link(&id, rid), l.web_url(&id, rid))),
            links.as_ref().and_then(|l| match q.tracking {
                Mode::Live => l.tracking(&id, rid, input.track),
                Mode::Inert => l.preview_tracking(input.track),
            }),
        )
    };
    answer(move || preview::stored(&input, limits, link, tracking)).await
}
