//! Live progress hubs behind `GET /v1/campaigns/{id}/events` (Server-Sent Events; the watcher and
//! the stream are in the HTTP layer).
//!
//! One watcher per campaign that anyone is watching looks at the store once a second and, when
//! anything changed, publishes a frame to every client at once (a broadcast channel), so fifty open
//! browser tabs cost what one does and never touch the send path. Frames carry increasing ids and
//! the last few hundred are kept, so a client that reconnects with `Last-Event-ID` gets what it
//! missed; one that was gone longer gets a fresh snapshot first. Frame ids start from the watcher's
//! clock in microseconds, so a watcher started later (after a quiet spell, or a restart) still
//! numbers above anything an earlier one sent.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;

/// Frames kept for clients that reconnect.
const RECENT: usize = 300;
/// A watcher with no clients for this long stops.
pub const IDLE_STOP: Duration = Duration::from_secs(30);
/// How often a watcher looks.
pub const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub id: i64,
    /// `progress` or `status`.
    pub event: &'static str,
    pub data: Value,
}

pub struct Hub {
    tx: broadcast::Sender<Arc<Frame>>,
    recent: Mutex<VecDeque<Arc<Frame>>>,
    /// Poked when the campaign was changed here: the watcher looks at once and publishes.
    stale: tokio::sync::Notify,
}

impl Hub {
    pub fn publish(&self, frame: Frame) {
        let frame = Arc::new(frame);
        let mut recent = self.recent.lock().expect("recent frames poisoned");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(frame.clone());
        // Nobody listening right now is fine: the frame is kept for the next one.
        let _ = self.tx.send(frame);
    }

    /// Clients listening now.
    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Resolves when the campaign was changed here since the watcher last looked.
    pub async fn made_stale(&self) {
        self.stale.notified().await
    }
}

/// The watchers, by campaign.
#[derive(Default)]
pub struct Progress {
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
}

/// What a client gets first, then the live receiver.
pub struct Subscription {
    pub backlog: Vec<Arc<Frame>>,
    pub live: broadcast::Receiver<Arc<Frame>>,
}

impl Progress {
    /// Subscribes to a campaign's frames, starting its watcher (`start`, given the new hub) if
    /// nobody was watching. `last` is the client's `Last-Event-ID`: the backlog holds the frames
    /// after it when they are still kept, else the latest frame (a snapshot of the present).
    pub fn subscribe(
        &self,
        campaign: &str,
        last: Option<i64>,
        start: impl FnOnce(Arc<Hub>),
    ) -> Subscription {
        let hub = {
            let mut hubs = self.hubs.lock().expect("hubs poisoned");
            hubs.entry(campaign.to_string())
                .or_insert_with(|| {
                    let hub = Arc::new(Hub {
                        tx: broadcast::channel(64).0,
                        recent: Mutex::new(VecDeque::new()),
                        stale: tokio::sync::Notify::new(),
                    });
                    start(hub.clone());
                    hub
                })
                .clone()
        };
        // Subscribe before reading the backlog, so nothing falls between the two.
        let live = hub.tx.subscribe();
        let recent = hub.recent.lock().expect("recent frames poisoned");
        let kept_from = recent.front().map(|f| f.id);
        let backlog = match (last, kept_from) {
            (Some(last), Some(first)) if last >= first - 1 => {
                recent.iter().filter(|f| f.id > last).cloned().collect()
            }
            _ => recent.back().cloned().into_iter().collect(),
        };
        Subscription { backlog, live }
    }

    /// The campaign was changed here (paused, cancelled, …): the frames kept no longer say what it
    /// is, so a client that connects now waits for the watcher's next frame, which comes at once,
    /// instead of getting the old state as its first word.
    pub fn changed(&self, campaign: &str) {
        let hubs = self.hubs.lock().expect("hubs poisoned");
        if let Some(hub) = hubs.get(campaign) {
            hub.recent.lock().expect("recent frames poisoned").clear();
            hub.stale.notify_one();
        }
    }

    /// Lets a watcher's hub go (it stops): a later client starts a new one.
    pub fn forget(&self, campaign: &str, hub: &Arc<Hub>) {
        let mut hubs = self.hubs.lock().expect("hubs poisoned");
        if hubs.get(campaign).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            hubs.remove(campaign);
        }
    }
}
