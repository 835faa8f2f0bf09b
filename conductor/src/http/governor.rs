//! `GET /v1/governor` (caps per scope, this minute's ledger, the audit log) and the forecasts:
//! a campaign's ETA and `GET /v1/campaigns/{id}/plan?finish_by=…`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::domain::forecast;
use crate::domain::scope::Scope;
use crate::http::extract::ApiQuery;
use crate::http::problem::Problem;
use crate::http::service::Service;
use crate::store::{rfc3339, Campaign, Status};
use sender::Millis;

/// What a campaign's sending is bound by, minute by minute, for a forecast.
struct Outlook {
    cfg: Arc<Config>,
    /// The global cap after throttling, as it stands now.
    throttled: u32,
    /// This campaign's share of the global cap among the running campaigns (by priority).
    share: f64,
    window: Option<crate::domain::schedule::Window>,
    send_at_ms: Option<Millis>,
}

impl Outlook {
    async fn of(svc: &Service, c: &Campaign) -> Result<Self, Problem> {
        let cfg = svc.work.config.borrow().clone();
        let throttled = svc
            .work
            .throttle
            .lock()
            .expect("throttle poisoned")
            .cap(cfg.governor.per_minute);
        let weights: u32 = svc
            .store
            .running()
            .await?
            .iter()
            .filter(|r| r.id != c.id)
            .map(|r| r.priority.max(1))
            .sum();
        let own = c.priority.max(1);
        Ok(Self {
            cfg,
            throttled,
            share: f64::from(own) / f64::from(own + weights),
            window: c.window.as_ref().and_then(|w| w.check().ok()),
            send_at_ms: c
                .send_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis()),
        })
    }

    /// Whether the campaign may send at all in minute `m`.
    fn open(&self, m: Millis) -> bool {
        let g = &self.cfg.governor;
        self.send_at_ms.is_none_or(|t| t <= m + 59_999)
            && self.window.as_ref().is_none_or(|w| w.open(m))
            && !g.schedule().quiet(m)
    }

    /// The global cap's part this campaign gets in minute `m`.
    fn share_of_global(&self, m: Millis) -> u32 {
        let global = self.cfg.governor.cap_at(m).min(self.throttled);
        (f64::from(global) * self.share).floor() as u32
    }

    fn rate(&self, c: &Campaign, m: Millis) -> u32 {
        if !self.open(m) {
            return 0;
        }
        let share = self.share_of_global(m);
        c.per_minute.map_or(share, |own| own.min(share))
    }
}

/// Share of provider requests that did not settle a recipient (deferred, to be made again).
fn deferral_rate(c: &Campaign) -> f64 {
    let k = &c.counts;
    let settled = k.sent + k.failed + k.unknown;
    if k.requests <= 0 {
        0.0
    } else {
        (1.0 - settled as f64 / k.requests as f64).clamp(0.0, 0.95)
    }
}

/// When a running campaign will finish: the slowest of its own pace and each capped domain's.
async fn forecast(svc: &Service, c: &Campaign, o: &Outlook, now: Millis) -> Option<Millis> {
    let d = deferral_rate(c);
    let mut eta = forecast::finish(c.counts.pending as u64, d, now, |m| o.rate(c, m))?;
    let domains: Vec<(String, u32)> = o
        .cfg
        .governor
        .domains
        .iter()
        .map(|(d, c)| (d.clone(), *c))
        .collect();
    if !domains.is_empty() {
        let names: Vec<String> = domains.iter().map(|(d, _)| d.clone()).collect();
        let open = svc.store.open_by_domain(&c.id, &names).await.ok()?;
        for ((_, cap), n) in domains.iter().zip(open) {
            let t = forecast::finish(n as u64, d, now, |m| o.rate(c, m).min(*cap))?;
            eta = eta.max(t);
        }
    }
    Some(eta)
}

/// A running campaign's forecast: when it ends as things stand (`None` when it cannot be told, as in
/// quiet hours that never end) and the per-minute rate it gets now.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Forecast {
    pub eta: Option<String>,
    pub rate_per_minute: u32,
}

/// The campaign as the API shows it: its state plus, while it is running, the forecast.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CampaignView {
    #[serde(flatten)]
    pub campaign: Campaign,
    #[serde(flatten)]
    pub forecast: Option<Forecast>,
    /// Its most clicked links (at most 50, people's clicks first), when it tracks clicks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<Vec<crate::domain::engagement::LinkClicks>>,
}

/// The campaign with its forecast, when it is running.
pub async fn with_eta(svc: &Service, c: Campaign) -> Result<CampaignView, Problem> {
    let forecast = if c.status == Status::Running {
        let now = svc.work.clock.now_ms();
        let o = Outlook::of(svc, &c).await?;
        Some(Forecast {
            eta: forecast(svc, &c, &o, now).await.map(rfc3339),
            rate_per_minute: o.rate(&c, sender::clock::minute_start(now)),
        })
    } else {
        None
    };
    let links = if c.track.clicks {
        Some(
            svc.store
                .links(&c.id, crate::domain::engagement::LINKS_SHOWN)
                .await?,
        )
    } else {
        None
    };
    Ok(CampaignView {
        campaign: c,
        forecast,
        links,
    })
}

#[derive(Deserialize)]
pub struct PlanQuery {
    finish_by: Option<String>,
}

/// Whether a campaign finishes by `finish_by` as things stand, and what per-minute rate it would need.
/// How far ahead `/plan?finish_by=` may look.
const PLAN_HORIZON_MS: i64 = 31 * 86_400_000;

pub async fn plan(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PlanQuery>,
) -> Result<Response, Problem> {
    let raw = q.finish_by.ok_or_else(|| {
        Problem::bad_query("`finish_by` is required: an RFC 3339 time such as 2026-12-24T18:00:00Z")
    })?;
    let deadline = chrono::DateTime::parse_from_rfc3339(&raw)
        .map_err(|e| {
            Problem::bad_query(format!(
                "`finish_by` must be an RFC 3339 time such as 2026-12-24T18:00:00Z: {e}"
            ))
        })?
        .timestamp_millis();
    let now = svc.work.clock.now_ms();
    // Each minute up to the deadline is looked at once: the horizon bounds the work of a request.
    if deadline > now + PLAN_HORIZON_MS {
        return Err(Problem::bad_query(format!(
            "`finish_by` must be within {} days from now",
            PLAN_HORIZON_MS / 86_400_000
        )));
    }
    let c = svc.store.campaign(&id).await?;
    let o = Outlook::of(&svc, &c).await?;
    let remaining = c.counts.pending as u64;
    let d = deferral_rate(&c);
    let eta = forecast(&svc, &c, &o, now).await;
    let finishes = eta.is_some_and(|t| t <= deadline);
    // The least steady rate that makes it, given the minutes the campaign may send in at all.
    let share = o.share_of_global(sender::clock::minute_start(now));
    let rate = o.rate(&c, sender::clock::minute_start(now));
    // Up to a month of minutes is CPU work: off the async threads.
    let needed = tokio::task::spawn_blocking(move || {
        forecast::rate_needed(remaining, d, now, deadline, |m| o.open(m), 10_000_000)
    })
    .await
    .map_err(|_| Problem::internal())?;
    let advice = match needed {
        _ if finishes => "finishes in time as configured".to_string(),
        None => "cannot finish by then at any rate: too little sending time before finish_by (windows, quiet hours, send_at)".into(),
        Some(n) if n <= share => format!("raise the campaign's per_minute to at least {n} (PUT /v1/campaigns/{id})"),
        Some(n) => format!(
            "needs {n}/min but its share of the global cap is {share}/min: raise [governor] per_minute or its priority"
        ),
    };
    Ok(Json(Plan {
        campaign: c.id,
        finish_by: rfc3339(deadline),
        remaining,
        deferral_rate: d,
        eta: eta.map(rfc3339),
        finishes,
        rate_needed_per_minute: needed,
        rate_per_minute: rate,
        share_of_global_per_minute: share,
        advice,
    })
    .into_response())
}

/// `GET /v1/campaigns/{id}/plan`: whether the campaign finishes by `finish_by`, and if not, what
/// per-minute rate it would need and what to change.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Plan {
    pub campaign: String,
    pub finish_by: String,
    /// Recipients not yet in a final state.
    pub remaining: u64,
    /// Share of provider requests that did not settle a recipient, from this campaign so far.
    pub deferral_rate: f64,
    /// When it ends as things stand; `null` when it cannot be told.
    pub eta: Option<String>,
    pub finishes: bool,
    /// The least steady rate that finishes in time; `null` when none does.
    pub rate_needed_per_minute: Option<u32>,
    pub rate_per_minute: u32,
    pub share_of_global_per_minute: u32,
    pub advice: String,
}

/// `GET /v1/governor`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct GovernorView {
    /// The calendar minute now.
    pub minute: String,
    /// The zone of quiet hours and warm-up days.
    pub timezone: String,
    /// The global scope first, then each capped domain, then each running campaign.
    pub scopes: Vec<ScopeView>,
    /// The latest cap changes and refused edits, newest first.
    pub changes: Vec<crate::store::AuditEntry>,
}

/// One scope's cap as configured and as it applies now, with this minute's ledger row.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ScopeView {
    pub scope: Scope,
    /// The cap as set (`null`: a campaign with no cap of its own).
    pub configured: Option<u32>,
    /// The cap that applies this minute.
    pub effective: Option<u32>,
    /// This minute's ledger row, once anything was granted in it.
    pub this_minute: Option<crate::store::MinuteStats>,
    #[serde(flatten)]
    pub of: ScopeKind,
}

/// What only one kind of scope shows.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ScopeKind {
    Global {
        /// Today's warm-up cap, if a warm-up is configured.
        warmup: Option<u32>,
        quiet_hours_now: bool,
        /// The cap after the provider pushed back, while lower than configured.
        throttled_to: Option<u32>,
    },
    Campaign {
        priority: u32,
        /// Past its `send_at` and inside its window.
        sending_now: bool,
    },
    Domain {},
}

/// Current caps per scope, this minute's ledger per scope, and the history of changes.
pub async fn governor(State(svc): State<Arc<Service>>) -> Result<Response, Problem> {
    let cfg = svc.work.config.borrow().clone();
    let now = svc.work.clock.now_ms();
    let minute = sender::clock::minute_start(now);
    let g = &cfg.governor;
    let schedule = g.schedule();
    let throttled = svc
        .work
        .throttle
        .lock()
        .expect("throttle poisoned")
        .cap(g.per_minute);
    let rows = svc.store.minute_rows(minute).await?;
    let this_minute = |scope: &Scope| rows.iter().find(|(s, _)| s == scope).map(|(_, m)| *m);
    let mut scopes = vec![ScopeView {
        this_minute: this_minute(&Scope::Global),
        scope: Scope::Global,
        configured: Some(g.per_minute),
        effective: Some(schedule.cap(g.per_minute, now).min(throttled)),
        of: ScopeKind::Global {
            warmup: schedule.warmup_cap(now),
            quiet_hours_now: schedule.quiet(now),
            throttled_to: (throttled < g.per_minute).then_some(throttled),
        },
    }];
    for (d, cap) in &g.domains {
        let scope = Scope::Domain(d.clone());
        scopes.push(ScopeView {
            this_minute: this_minute(&scope),
            scope,
            configured: Some(*cap),
            effective: Some(*cap),
            of: ScopeKind::Domain {},
        });
    }
    for c in svc.store.running().await? {
        let scope = Scope::Campaign(c.id.clone());
        scopes.push(ScopeView {
            this_minute: this_minute(&scope),
            scope,
            configured: c.per_minute,
            effective: c.per_minute,
            of: ScopeKind::Campaign {
                priority: c.priority,
                sending_now: c.may_send(now),
            },
        });
    }
    Ok(Json(GovernorView {
        minute: rfc3339(minute),
        timezone: g.schedule.timezone.clone(),
        scopes,
        changes: svc.store.audit(200).await?,
    })
    .into_response())
}
