//! `GET /v1/campaigns/{id}` as pollers see it: the campaign with its forecast, computed through the
//! shared [`Views`](crate::engine::views::Views) cache so that many pollers cost one read a second.

use std::sync::Arc;

use axum::body::Bytes;

use crate::http::governor::with_eta;
use crate::http::problem::Problem;
use crate::http::service::Service;

/// The campaign's view as JSON.
pub async fn campaign_view(svc: &Arc<Service>, id: &str) -> Result<Bytes, Problem> {
    let (s, key) = (svc.clone(), id.to_string());
    let (json, computed) = svc
        .work
        .views
        .get(id, move || async move {
            let c = s.store.campaign(&key).await?;
            let value = with_eta(&s, c).await?;
            serde_json::to_vec(&value)
                .map(Bytes::from)
                .map_err(|_| Problem::internal())
        })
        .await?;
    svc.work.metrics.campaign_view(computed);
    Ok(json)
}
