//! `GET /v1/campaigns/{id}` as pollers see it: about one computation per campaign per [`FRESH`],
//! shared.
//!
//! The view counts a campaign's recipients by state and forecasts its end, which reads the whole
//! campaign (and every running one for the fair share). A dashboard polling it, a script in a loop, or
//! a thousand of them must not turn that into a thousand reads a second competing with the send
//! path for the store. So a view is computed once and served to every request for the next
//! [`FRESH`]; after that the first request starts a new computation in the background and it and
//! everyone else keep getting the last view until the new one is there, so nobody waits on a
//! computation that takes hundreds of milliseconds on a large campaign. Only when there is no view
//! to serve (the first request, or none for [`STALE`]) does a request compute, and those arriving
//! meanwhile wait for that one instead of starting their own.
//!
//! Whatever this conductor changes itself (pause, resume, cancel, a new cap, a retry, the start,
//! the end, a stop by the provider) drops the campaign's view at once, so a client that acted sees
//! its action and a stream's last word agrees with the view; counts are otherwise about a second
//! old, as in the event stream. (With several conductors, another one's changes show within seconds.)
//!
//! Age is measured on the machine's monotonic clock, not the service's injected one: it bounds load
//! on the store, which happens in real time whatever time the campaign believes it is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;

use crate::problem::Problem;
use crate::service::Service;

/// How long a computed view is served as it is.
pub const FRESH: Duration = Duration::from_secs(1);
/// Up to this age a view is still served while a newer one is computed in the background, so a
/// poller never waits for the store; older than this (nobody asked for a while) a request computes it.
pub const STALE: Duration = Duration::from_secs(5);
/// Past this many campaigns, views that are no longer servable are let go.
const KEEP: usize = 1_024;

#[derive(Clone)]
struct View {
    at: Instant,
    json: Bytes,
}

#[derive(Default)]
struct Slot {
    view: Mutex<Option<View>>,
    /// Held while the view is computed: one computation at a time per campaign.
    computing: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
}

impl Slot {
    fn servable(&self) -> Option<View> {
        let v = self.view.lock().expect("view poisoned");
        v.as_ref().filter(|v| v.at.elapsed() < STALE).cloned()
    }
}

#[derive(Default)]
pub struct Views {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Views {
    /// The campaign's view as JSON: a fresh one at once; a stale one at once while a newer one is
    /// computed in the background; else computed now (once, however many ask).
    pub async fn get(&self, svc: &Arc<Service>, id: &str) -> Result<Bytes, Problem> {
        let slot = self.slot(id);
        if let Some(v) = slot.servable() {
            if v.at.elapsed() >= FRESH && !slot.refreshing.swap(true, Ordering::AcqRel) {
                let (svc, id, slot) = (svc.clone(), id.to_string(), slot.clone());
                tokio::spawn(async move {
                    let _one = slot.computing.lock().await;
                    if let Err(e) = compute(&svc, &id, &slot).await {
                        tracing::warn!(campaign = %id, error = %e.detail, "campaign view not refreshed");
                    }
                    slot.refreshing.store(false, Ordering::Release);
                });
            }
            svc.work.metrics.campaign_view(false);
            return Ok(v.json);
        }
        let _one = slot.computing.lock().await;
        // Whoever held the lock before may have just computed it.
        if let Some(v) = slot.servable() {
            svc.work.metrics.campaign_view(false);
            return Ok(v.json);
        }
        match compute(svc, id, &slot).await {
            Ok(json) => {
                svc.work.metrics.campaign_view(true);
                Ok(json)
            }
            // Errors (no such campaign, store down) are not kept: the next request asks again.
            Err(e) => {
                self.forget(id);
                Err(e)
            }
        }
    }

    fn slot(&self, id: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().expect("views poisoned");
        if slots.len() >= KEEP && !slots.contains_key(id) {
            // Keep what is servable or being computed (somebody is waiting for it).
            slots.retain(|_, s| s.servable().is_some() || s.computing.try_lock().is_err());
        }
        slots.entry(id.to_string()).or_default().clone()
    }

    /// Drops the campaign's view, so the next request computes it afresh.
    pub fn forget(&self, id: &str) {
        self.slots.lock().expect("views poisoned").remove(id);
    }
}

async fn compute(svc: &Service, id: &str, slot: &Slot) -> Result<Bytes, Problem> {
    // As old as the read it starts with.
    let at = Instant::now();
    let c = svc.store.campaign(id).await?;
    let value = crate::governor_api::with_eta(svc, c).await?;
    let json = Bytes::from(serde_json::to_vec(&value).map_err(|_| Problem::internal())?);
    *slot.view.lock().expect("view poisoned") = Some(View {
        at,
        json: json.clone(),
    });
    Ok(json)
}
