//! `GET /v1/campaigns/{id}` as pollers see it: one computation per campaign per [`FRESH`], shared.
//!
//! The view counts a campaign's recipients by state and forecasts its end, which reads the whole
//! campaign (and every running one for the fair share). A dashboard polling it, a script in a loop, or
//! a thousand of them must not turn that into a thousand reads a second competing with the send
//! path for the store. So a view is computed once and served to every request for the next
//! [`FRESH`]; requests that arrive while it is being computed wait for that computation instead of
//! starting their own. What this conductor changes itself (pause, resume, cancel, a new cap) drops the
//! campaign's view at once, so a client that acted sees its action; counts are at most [`FRESH`] old,
//! as in the event stream.
//!
//! Age is measured on the machine's monotonic clock, not the service's injected one: it bounds load
//! on the store, which happens in real time whatever time the campaign believes it is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;

use crate::problem::Problem;
use crate::service::Service;

/// How long a computed view is served.
pub const FRESH: Duration = Duration::from_secs(1);
/// Past this many campaigns, views that are no longer fresh are let go.
const KEEP: usize = 1_024;

struct View {
    at: Instant,
    json: Bytes,
}

type Slot = Arc<tokio::sync::Mutex<Option<View>>>;

#[derive(Default)]
pub struct Views {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Views {
    /// The campaign's view as JSON, computed unless a fresh one is at hand.
    pub async fn get(&self, svc: &Service, id: &str) -> Result<Bytes, Problem> {
        let slot = {
            let mut slots = self.slots.lock().expect("views poisoned");
            if slots.len() >= KEEP && !slots.contains_key(id) {
                slots.retain(|_, s| match s.try_lock() {
                    Ok(v) => v.as_ref().is_some_and(|v| v.at.elapsed() < FRESH),
                    // Being computed: somebody is waiting for it.
                    Err(_) => true,
                });
            }
            slots.entry(id.to_string()).or_default().clone()
        };
        let mut view = slot.lock().await;
        if let Some(v) = view.as_ref().filter(|v| v.at.elapsed() < FRESH) {
            svc.work.metrics.campaign_view(false);
            return Ok(v.json.clone());
        }
        // As old as the read it starts with.
        let at = Instant::now();
        // Errors (no such campaign, store down) are not kept: the next request asks again.
        let c = match svc.store.campaign(id).await {
            Ok(c) => c,
            Err(e) => {
                drop(view);
                self.forget(id);
                return Err(e.into());
            }
        };
        let value = crate::governor_api::with_eta(svc, c).await?;
        let json = Bytes::from(serde_json::to_vec(&value).map_err(|_| Problem::internal())?);
        *view = Some(View {
            at,
            json: json.clone(),
        });
        svc.work.metrics.campaign_view(true);
        Ok(json)
    }

    /// Drops the campaign's view, so the next request computes it afresh.
    pub fn forget(&self, id: &str) {
        self.slots.lock().expect("views poisoned").remove(id);
    }
}
