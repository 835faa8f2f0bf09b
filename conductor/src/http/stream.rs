//! `GET /v1/campaigns/{id}/events`: the watcher that feeds a campaign's progress hub once a second,
//! and the Server-Sent Events stream that follows it (see [`crate::engine::progress`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::engine::progress::{Frame, Hub, IDLE_STOP, TICK};
use crate::http::service::Service;
use crate::store::{Campaign, Status};

/// A progress frame: what the dashboard and `campaign watch` show — counts per state, this minute's
/// global ledger row against its cap, the send rate over the last minute, the ETA. The CLI reads it
/// as this same type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Snapshot {
    #[serde(default)]
    pub campaign: String,
    pub status: Status,
    #[serde(default)]
    pub status_reason: Option<String>,
    #[serde(default)]
    pub counts: crate::store::Counts,
    #[serde(default)]
    pub batches: u32,
    #[serde(default)]
    pub batches_rendered: u32,
    #[serde(default)]
    pub minute: Option<crate::store::MinuteStats>,
    #[serde(default)]
    pub rate_per_minute: i64,
    #[serde(default)]
    pub eta: Option<String>,
    /// Opens and clicks so far, when the campaign tracks them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engagement: Option<crate::domain::engagement::Engagement>,
    #[serde(default)]
    pub at: String,
}

async fn snapshot(svc: &Arc<Service>, c: &Campaign, rate: i64) -> Snapshot {
    let now = svc.work.clock.now_ms();
    let minute = svc
        .store
        .minutes(&crate::domain::scope::Scope::Global, now)
        .await
        .ok()
        .and_then(|m| m.last().copied())
        .filter(|m| m.minute_ms == sender::clock::minute_start(now));
    let eta = crate::http::governor::with_eta(svc, c.clone())
        .await
        .ok()
        .and_then(|v| v.forecast)
        .and_then(|f| f.eta);
    Snapshot {
        campaign: c.id.clone(),
        status: c.status,
        status_reason: c.status_reason.clone(),
        counts: c.counts.clone(),
        batches: c.batches,
        batches_rendered: c.batches_rendered,
        minute,
        rate_per_minute: rate,
        eta,
        engagement: c.engagement,
        at: crate::store::rfc3339(now),
    }
}

/// Messages sent in the last 60 s, from (when, sent so far) samples: the number a cap per minute is
/// read against. Scaling a few seconds up to a minute would show a campaign that sends its minute's
/// budget in a burst (as a small one does) at several times the cap. Before a minute of samples it
/// counts what was sent since the first one.
fn sent_last_minute(samples: &mut VecDeque<(i64, i64)>, now: i64, sent: i64) -> i64 {
    samples.push_back((now, sent));
    // Keep the newest sample at least a minute old: the count is taken from it.
    while samples.get(1).is_some_and(|(t, _)| now - t >= 60_000) {
        samples.pop_front();
    }
    samples.front().map_or(0, |(_, s0)| (sent - s0).max(0))
}

/// Looks every [`TICK`] while anyone listens (and a little after), publishing what changed.
async fn watch(
    svc: Arc<Service>,
    campaign: String,
    hub: Arc<Hub>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut next_id = svc.work.clock.now_ms() * 1_000;
    let mut id = || {
        next_id += 1;
        next_id
    };
    type Seen = (
        Status,
        crate::store::Counts,
        u32,
        Option<crate::domain::engagement::Engagement>,
    );
    let mut last: Option<Seen> = None;
    // (when, sent) samples for the rate over the last minute.
    let mut samples: VecDeque<(i64, i64)> = VecDeque::new();
    let mut idle_since = None;
    // Set when the campaign was changed here: publish what it is now, changed counts or not.
    let mut stale = false;
    loop {
        match svc.store.campaign(&campaign).await {
            Ok(c) => {
                let now = svc.work.clock.now_ms();
                let rate = sent_last_minute(&mut samples, now, c.counts.sent);
                // Opens and clicks go on after the send: they are progress too.
                let seen = (c.status, c.counts.clone(), c.batches_rendered, c.engagement);
                let status_changed = last.as_ref().is_some_and(|(s, ..)| *s != c.status);
                if last.as_ref() != Some(&seen) || stale {
                    let data =
                        serde_json::to_value(snapshot(&svc, &c, rate).await).unwrap_or(Value::Null);
                    if status_changed {
                        hub.publish(Frame {
                            id: id(),
                            event: "status",
                            data: json!({
                                "campaign": c.id, "status": c.status, "status_reason": c.status_reason,
                            }),
                        });
                    }
                    hub.publish(Frame {
                        id: id(),
                        event: "progress",
                        data,
                    });
                    last = Some(seen);
                    stale = false;
                }
            }
            Err(e) => tracing::warn!(campaign = %campaign, error = %e, "progress not read"),
        }
        if hub.listeners() == 0 {
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= IDLE_STOP {
                svc.work.progress.forget(&campaign, &hub);
                return;
            }
        } else {
            idle_since = None;
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = hub.made_stale() => stale = true,
            _ = stop.cancelled() => return,
        }
    }
}

/// `GET /v1/campaigns/{id}/events`.
pub async fn events(
    axum::extract::State(svc): axum::extract::State<Arc<Service>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, crate::http::problem::Problem> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use axum::response::IntoResponse;
    // Does it exist? Asked of the shared view: fifty tabs opening at once must not be fifty reads.
    crate::http::view::campaign_view(&svc, &id).await?;
    let last: Option<i64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let sub = svc.work.progress.subscribe(&id, last, |hub| {
        tokio::spawn(watch(svc.clone(), id.clone(), hub, svc.streams.clone()));
    });
    let state = (
        sub.backlog.into_iter(),
        sub.live,
        last.unwrap_or(i64::MIN),
        svc.streams.clone(),
    );
    let stream = futures::stream::unfold(
        state,
        |(mut backlog, mut live, mut sent, stop)| async move {
            loop {
                let frame = match backlog.next() {
                    Some(f) => f,
                    None => tokio::select! {
                        r = live.recv() => match r {
                            Ok(f) => f,
                            // A client too slow for the stream skips ahead: every progress frame is whole.
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                        _ = stop.cancelled() => return None,
                    },
                };
                // The backlog and the live channel may both hold a frame: send each once, in order.
                if frame.id <= sent {
                    continue;
                }
                sent = frame.id;
                let event = Event::default()
                    .id(frame.id.to_string())
                    .event(frame.event)
                    .data(frame.data.to_string());
                return Some((
                    Ok::<_, std::convert::Infallible>(event),
                    (backlog, live, sent, stop),
                ));
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_what_was_sent_in_the_last_sixty_seconds() {
        let mut s = VecDeque::new();
        // A small campaign sends 300 in its first 4 s: 300 in the last minute, not 4,500/min.
        assert_eq!(sent_last_minute(&mut s, 0, 0), 0);
        assert_eq!(sent_last_minute(&mut s, 1_000, 80), 80);
        assert_eq!(sent_last_minute(&mut s, 4_000, 300), 300);
        // Steady 10 a second from then on.
        let mut got = 0;
        for t in 5..=120 {
            got = sent_last_minute(&mut s, t * 1_000, 300 + (t - 4) * 10);
        }
        assert_eq!(got, 600);
        // A gap in the samples: counted from the newest one at least a minute old.
        assert_eq!(sent_last_minute(&mut s, 200_000, 1_500), 1_500 - 1_460);
        assert!(s.len() <= 62, "{}", s.len());
    }
}
