//! The worker API: remote `sender` processes lease work and report outcomes here, and remote
//! `renderer` processes claim batches and report them rendered (the contracts' shapes live in
//! `sender::remote` and `renderer::deploy::remote`). Closed unless `[workers] secret` is set.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use renderer::deploy::remote::{RenderedReport, CLAIM_PATH, RENDERED_PATH};
use renderer::{RenderJob, RenderSource, RenderedBatch, SourceError};
use sender::remote::{LeaseRequest, LeaseResponse, ReportRequest, LEASES_PATH};
use sender::{WorkError, WorkSource};

use crate::http::problem::{Problem, ProblemType};
use crate::http::service::Service;
use renderer::deploy::config::Secret;

pub fn router() -> Router<Arc<Service>> {
    Router::new()
        .route(LEASES_PATH, post(lease))
        .route(&format!("{LEASES_PATH}/{{id}}/outcomes"), post(report))
        .route(CLAIM_PATH, post(claim))
        .route(RENDERED_PATH, post(rendered))
}

fn authorise(svc: &Service, headers: &HeaderMap) -> Result<(), Problem> {
    // Live: a rotated secret applies at the next request.
    let secret = svc.work.config.borrow().workers.secret.clone();
    let Some(secret) = secret.as_ref().map(Secret::expose) else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            ProblemType::WorkersDisabled,
            "Remote workers are not enabled",
            "set CONDUCTOR__WORKERS__SECRET on the conductor and on its workers",
        ));
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if crate::domain::secret::same(token.as_bytes(), secret.as_bytes()) => Ok(()),
        _ => Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            ProblemType::Unauthorised,
            "Not authorised",
            "a worker must present the workers' secret as a bearer token",
        )),
    }
}

fn unavailable(e: WorkError) -> Problem {
    tracing::warn!(error = %e, "worker request failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ProblemType::Unavailable,
        "Try again",
        e.to_string(),
    )
}

/// A worker's request: its secret checked first, then its body read within `limit` and parsed.
async fn worker_request<T: serde::de::DeserializeOwned>(
    svc: &Service,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    what: &str,
) -> Result<T, Problem> {
    authorise(svc, headers)?;
    let body = crate::http::body::read(body, limit, what).await?;
    crate::http::extract::json(&body)
}

async fn lease(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let req: LeaseRequest = worker_request(
        &svc,
        &headers,
        body,
        crate::http::body::WORKER_SMALL,
        "a lease request",
    )
    .await?;
    if !(1..=10_000).contains(&req.want) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemType::Validation,
            "Invalid lease request",
            "`want` must be between 1 and 10000",
        ));
    }
    let reply = svc.work.lease(req.want).await.map_err(unavailable)?;
    Ok(Json(LeaseResponse {
        now: svc.work.clock.now_ms(),
        reply,
    })
    .into_response())
}

async fn report(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let req: ReportRequest = worker_request(
        &svc,
        &headers,
        body,
        crate::http::body::WORKER_REPORT,
        "a lease report",
    )
    .await?;
    match svc.work.report(&id, req.outcomes, req.last).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(WorkError::LeaseLost(id)) => Err(Problem::new(
            StatusCode::CONFLICT,
            ProblemType::LeaseLost,
            "Lease not held",
            format!("lease {id} has expired or was closed"),
        )),
        Err(e) => Err(unavailable(e)),
    }
}

fn source_problem(e: SourceError) -> Problem {
    match e {
        SourceError::Gone(why) => Problem::new(
            StatusCode::GONE,
            ProblemType::RenderGone,
            "Nothing to render",
            why,
        ),
        SourceError::Unavailable(why) => {
            tracing::warn!(error = %why, "render request failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemType::Unavailable,
                "Try again",
                why,
            )
        }
    }
}

async fn claim(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let job: RenderJob = worker_request(
        &svc,
        &headers,
        body,
        crate::http::body::WORKER_SMALL,
        "a render claim",
    )
    .await?;
    let input = svc.work.load(&job).await.map_err(source_problem)?;
    Ok(Json(input).into_response())
}

async fn rendered(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let report: RenderedReport = worker_request(
        &svc,
        &headers,
        body,
        crate::http::body::WORKER_REPORT,
        "a render report",
    )
    .await?;
    // Senders fetch what the store names: only the batch's own key may be recorded.
    let expected = RenderedBatch::key(&report.job.campaign_id, report.job.batch);
    let older = RenderedBatch::format_one_key(&report.job.campaign_id, report.job.batch);
    if report.key != expected && report.key != older {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemType::Validation,
            "Invalid render report",
            format!(
                "batch objects are written at {expected}, not {}",
                report.key
            ),
        ));
    }
    svc.work
        .rendered(&report.job, &report.key, report.failed)
        .await
        .map_err(source_problem)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
