//! Messages before they are sent: `POST /v1/preview` renders a campaign's message for one recipient
//! before the campaign exists, `GET /v1/campaigns/{id}/recipients/{rid}/message` a stored
//! campaign's message for one of its recipients.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use crate::domain::preview::{self, PreviewRequest};
use crate::http::problem::Problem;
use crate::http::service::Service;

pub fn router() -> Router<Arc<Service>> {
    Router::new().route("/v1/preview", post(preview)).route(
        "/v1/campaigns/{id}/recipients/{rid}/message",
        axum::routing::get(stored),
    )
}

/// The campaign with an inline template is as large as the `campaign` part of a multipart create.
const LIMIT: usize = crate::http::body::CAMPAIGN_PART;

async fn preview(State(svc): State<Arc<Service>>, req: Request) -> Result<Response, Problem> {
    let bytes = crate::http::body::read(req.into_body(), LIMIT, "a preview request").await?;
    let request: PreviewRequest =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&bytes))
            .map_err(|e| Problem::bad_json_at(&e))?;
    let (templates, limits, link) = {
        let config = svc.work.config.borrow();
        (
            config.campaigns.templates_dir.clone(),
            config.campaigns.render_limits(),
            config
                .unsubscribe
                .links()
                .map(|l| (l.preview_link(), l.preview_web_url())),
        )
    };
    answer(move || preview::preview(&request, &templates, limits, link)).await
}

/// Compiling and rendering a template is CPU work: done off the async threads.
async fn answer(
    render: impl FnOnce() -> Result<preview::Preview, crate::domain::validate::Invalid> + Send + 'static,
) -> Result<Response, Problem> {
    let shown = tokio::task::spawn_blocking(render).await.map_err(|e| {
        tracing::error!(error = %e, "preview task failed");
        Problem::internal()
    })??;
    Ok(Json(shown).into_response())
}

/// The message of recipient `rid` as its campaign sends it: rendered from the stored template and
/// that recipient's data, with its own signed unsubscribe link.
async fn stored(
    State(svc): State<Arc<Service>>,
    Path((id, rid)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let rid: i64 = rid
        .parse()
        .map_err(|_| Problem::not_found(format!("no recipient {rid:?}: ids are numbers")))?;
    let input = svc.store.message_input(&id, rid).await?;
    let (limits, link) = {
        let config = svc.work.config.borrow();
        (
            config.campaigns.render_limits(),
            config
                .unsubscribe
                .links()
                .map(|l| (l.link(&id, rid), l.web_url(&id, rid))),
        )
    };
    answer(move || preview::stored(&input, limits, link)).await
}
