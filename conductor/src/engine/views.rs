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
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;

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
    /// The campaign's view as JSON, and whether this request computed it: a fresh one at once; a
    /// stale one at once while `compute` makes a newer one in the background; else `compute` now
    /// (once, however many ask). Errors are not kept: the next request asks again.
    pub async fn get<F, Fut, E>(&self, id: &str, compute: F) -> Result<(Bytes, bool), E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let slot = self.slot(id);
        if let Some(v) = slot.servable() {
            if v.at.elapsed() >= FRESH && !slot.refreshing.swap(true, Ordering::AcqRel) {
                let (id, slot) = (id.to_string(), slot.clone());
                tokio::spawn(async move {
                    let _one = slot.computing.lock().await;
                    if let Err(e) = fill(&slot, compute()).await {
                        tracing::warn!(campaign = %id, error = %e, "campaign view not refreshed");
                    }
                    slot.refreshing.store(false, Ordering::Release);
                });
            }
            return Ok((v.json, false));
        }
        let _one = slot.computing.lock().await;
        // Whoever held the lock before may have just computed it.
        if let Some(v) = slot.servable() {
            return Ok((v.json, false));
        }
        match fill(&slot, compute()).await {
            Ok(json) => Ok((json, true)),
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

/// Computes a view into its slot.
async fn fill<E>(slot: &Slot, compute: impl Future<Output = Result<Bytes, E>>) -> Result<Bytes, E> {
    // As old as the read it starts with.
    let at = Instant::now();
    let json = compute.await?;
    *slot.view.lock().expect("view poisoned") = Some(View {
        at,
        json: json.clone(),
    });
    Ok(json)
}
