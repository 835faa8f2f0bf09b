//! The conductor's side of the worker contracts, in-process: it serves leases and render inputs from
//! the Store, and runs the reconcile step that hands out render jobs, expires silent leases, and
//! announces campaigns that started or finished.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use renderer::{BodyStore, RenderInput, RenderJob, RenderSource, SourceError};
use sender::{Clock, LeaseReply, RecipientOutcome, WorkError, WorkSource};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::OnAmbiguous;
use crate::domain::throttle::{Aimd, Change};
use crate::engine::dispatch::Dispatch;
use crate::engine::events::{Events, Kind};
use crate::store::{LeaseRules, ReportRules, Store, StoreError};

/// How long an `Idempotency-Key` is remembered.
const IDEMPOTENCY_KEPT_MS: i64 = 24 * 3_600_000;
/// How long a closed lease is kept: a day of leases is enough to follow up a report.
const CLOSED_LEASES_KEPT_MS: i64 = 24 * 3_600_000;
/// How long ledger minutes are kept: a day longer than the week `GET /v1/minutes` serves (10,080 minutes).
const LEDGER_KEPT_MS: i64 = 8 * 24 * 3_600_000;

pub struct Work {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub config: watch::Receiver<Arc<Config>>,
    pub dispatch: Arc<dyn Dispatch>,
    pub bodies: Arc<dyn BodyStore>,
    pub events: Events,
    /// Poked when there is something new to hand out (a campaign created or resumed).
    pub wake: Notify,
    /// This conductor's view of provider throttling; the minute's cap is fixed by whoever opens it.
    pub throttle: Mutex<Aimd>,
    pub metrics: crate::engine::metrics::Metrics,
    /// `GET /v1/campaigns/{id}` as computed about once a second, shared by every poller; dropped
    /// here whenever this conductor changes a campaign's status.
    pub views: crate::engine::views::Views,
    /// The event stream's hubs, one per campaign someone follows live.
    pub progress: crate::engine::progress::Progress,
}

impl Work {
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// The global cap for a minute first touched at `now`: throttling lowers the configured cap,
    /// the warm-up lowers it too, and quiet hours stop it.
    pub(crate) fn cap_at(&self, cfg: &Config, now: sender::Millis) -> u32 {
        let throttled = self
            .throttle
            .lock()
            .expect("throttle poisoned")
            .cap(cfg.governor.per_minute);
        cfg.governor.cap_at(now).min(throttled)
    }

    /// This conductor changed the campaign's status: what pollers and the event stream keep of it
    /// is dropped, so the next read and the next client see the change.
    pub fn changed(&self, id: &str) {
        self.views.forget(id);
        self.progress.changed(id);
    }

    /// One reconcile pass: hand out render jobs, expire silent leases, note campaigns that started or
    /// finished, and delete the bodies of campaigns past their retention. Every step is a conditional
    /// update, so several conductors on one database may run it at once.
    pub async fn reconcile(&self) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let cfg = self.config();
        let redispatch = cfg.dispatch.redispatch_after_ms as i64;
        let jobs = self
            .store
            .batches_to_render(
                now - redispatch,
                now,
                cfg.campaigns.render_ahead(&cfg.governor),
                10_000,
            )
            .await?;
        if !jobs.is_empty() {
            let n = jobs.len();
            match self.dispatch.send(jobs).await {
                Ok(()) => tracing::debug!(jobs = n, "render jobs handed out"),
                Err(e) => {
                    tracing::warn!(error = %e, "render jobs not handed out; retried after dispatch.redispatch_after_ms")
                }
            }
        }
        // What a cancel left waiting is marked a chunk at a time, and the rows of a discarded import
        // removed; the next pass follows at once while either has more to do.
        let swept = self.store.sweep_cancelled(now, 50_000).await?;
        for id in self
            .store
            .abandon_stale_imports(now - crate::store::IMPORT_SILENCE_MS, now)
            .await?
        {
            tracing::warn!(campaign = %id, "upload of the recipient list fell silent: import abandoned");
            self.changed(&id);
        }
        let purged = self.store.purge(50_000, now - IDEMPOTENCY_KEPT_MS).await?;
        // A 50M campaign leaves 250,000 leases; history is pruned as it ages, a bounded amount a pass.
        self.store
            .prune_history(now - CLOSED_LEASES_KEPT_MS, now - LEDGER_KEPT_MS, 20_000)
            .await?;
        if swept + purged > 0 {
            self.wake.notify_one();
        }
        let resend = cfg.campaigns.on_ambiguous == OnAmbiguous::Resend;
        let lost = self.store.expire_leases(now, resend).await?;
        if lost > 0 {
            tracing::warn!(
                recipients = lost,
                "leases expired without a report; recipients marked unknown"
            );
        }
        for id in self.store.mark_started(now).await? {
            self.changed(&id);
            self.events.emit(Kind::Started, &id, None).await;
        }
        for id in self.store.complete_finished(now).await? {
            self.changed(&id);
            self.events.emit(Kind::Completed, &id, None).await;
        }
        let keep_ms = i64::from(cfg.bodies.retention_days) * 86_400_000;
        for id in self.store.bodies_to_purge(now - keep_ms).await? {
            match self.bodies.delete_prefix(&format!("campaigns/{id}/")).await {
                Ok(()) => {
                    self.store.bodies_purged(&id, now).await?;
                    tracing::info!(campaign = %id, "rendered bodies deleted (retention)");
                }
                Err(e) => tracing::warn!(campaign = %id, error = %e, "bodies not deleted yet"),
            }
        }
        Ok(())
    }

    /// Reconciles every second, or at once when woken, until stopped.
    pub async fn run_reconcile(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "reconcile failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = self.wake.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

impl Work {
    /// Feeds a report to AIMD; a cut also lowers what is left of this minute, because the provider
    /// is refusing now, not from the next minute on.
    async fn observe_throttling(&self, cfg: &Config, outcomes: &[RecipientOutcome], now: i64) {
        let attempted = outcomes.iter().filter(|o| o.outcome.attempted()).count();
        let throttled = outcomes
            .iter()
            .filter(|o| matches!(o.outcome, sender::Outcome::Throttled { .. }))
            .count();
        let sent = outcomes
            .iter()
            .filter(|o| matches!(o.outcome, sender::Outcome::Sent { .. }))
            .count();
        let configured = cfg.governor.per_minute;
        let change = self.throttle.lock().expect("throttle poisoned").observe(
            &cfg.governor.throttle,
            configured,
            (attempted, throttled, sent),
            now,
        );
        match change {
            Change::Lowered(cap) => {
                tracing::warn!(
                    cap,
                    configured,
                    throttled,
                    "provider is throttling: per-minute rate lowered"
                );
                let minute = sender::clock::minute_start(now);
                if let Err(e) = self.store.lower_cap(minute, cap).await {
                    tracing::warn!(error = %e, "this minute's cap not lowered");
                }
            }
            Change::Recovered => {
                tracing::info!(configured, "throttling over: back at the configured rate")
            }
            Change::None => {}
        }
    }
}

#[async_trait]
impl WorkSource for Work {
    async fn lease(&self, want: usize) -> Result<LeaseReply, WorkError> {
        let cfg = self.config();
        let now = self.clock.now_ms();
        let rules = LeaseRules {
            want: want.min(u32::MAX as usize) as u32,
            now,
            cap: self.cap_at(&cfg, now),
            domains: cfg
                .governor
                .domains
                .iter()
                .map(|(d, c)| (d.clone(), *c))
                .collect(),
            margin_ms: i64::from(cfg.governor.safety_margin_ms),
            // A request started at the last moment may take the provider timeout to answer, and its
            // report a few retries to arrive.
            ttl_ms: cfg.provider.timeout_ms as i64 + i64::from(cfg.workers.lease_grace_ms),
            safety: cfg.safety.clone(),
        };
        let reply = self
            .store
            .lease(rules)
            .await
            .map_err(|e| WorkError::Unavailable(e.to_string()))?;
        self.metrics.lease(match reply {
            LeaseReply::Lease(_) => "granted",
            LeaseReply::NoTokens { .. } => "no_tokens",
            LeaseReply::Idle => "idle",
        });
        Ok(reply)
    }

    async fn report(
        &self,
        lease_id: &str,
        outcomes: Vec<RecipientOutcome>,
        last: bool,
    ) -> Result<(), WorkError> {
        let cfg = self.config();
        let now = self.clock.now_ms();
        let rules = ReportRules {
            now,
            max_attempts: cfg.campaigns.max_attempts,
            resend_ambiguous: cfg.campaigns.on_ambiguous == OnAmbiguous::Resend,
        };
        self.observe_throttling(&cfg, &outcomes, now).await;
        let stop_reason = outcomes.iter().find_map(|o| match &o.outcome {
            sender::Outcome::AccountStop { reason } => Some(reason.clone()),
            _ => None,
        });
        match self.store.report(lease_id, &outcomes, last, rules).await {
            Ok(done) => {
                let provider = cfg.provider.kind.as_str();
                for o in outcomes.iter().filter(|o| o.outcome.attempted()) {
                    self.metrics.sent(provider, o.outcome.kind(), o.latency_ms);
                }
                if let (Some(campaign), Some(reason)) = (done.paused, stop_reason) {
                    self.changed(&campaign);
                    self.events
                        .emit(Kind::Failed, &campaign, Some(reason))
                        .await;
                }
                if done.drained {
                    // The campaign has just finished: let reconcile close it now, not next tick.
                    // Only then: uncapped, last reports come dozens a second, and each would ask
                    // for another whole reconcile pass.
                    self.wake.notify_one();
                }
                Ok(())
            }
            Err(StoreError::LeaseLost(id)) => Err(WorkError::LeaseLost(id)),
            Err(e) => Err(WorkError::Unavailable(e.to_string())),
        }
    }
}

#[async_trait]
impl RenderSource for Work {
    async fn load(&self, job: &RenderJob) -> Result<RenderInput, SourceError> {
        let hold = self.config().dispatch.redispatch_after_ms as i64;
        match self
            .store
            .claim_render(job, self.clock.now_ms(), hold)
            .await
        {
            Ok(Some(mut input)) => {
                self.metrics.render_claimed(&job.campaign_id, job.batch);
                input.limits = self.config().campaigns.render_limits();
                // Signed here, not by the renderer: the secret stays with the conductor.
                if let Some(links) = self.config().unsubscribe.links() {
                    for r in &mut input.recipients {
                        r.unsubscribe = Some(links.link(&job.campaign_id, r.id));
                        r.web_url = Some(links.web_url(&job.campaign_id, r.id));
                        r.tracking = links.tracking(&job.campaign_id, r.id, input.track);
                    }
                }
                Ok(input)
            }
            Ok(None) => Err(SourceError::Gone(format!(
                "{}/{} needs no rendering or is being rendered",
                job.campaign_id, job.batch
            ))),
            Err(e) => Err(SourceError::Unavailable(e.to_string())),
        }
    }

    async fn rendered(
        &self,
        job: &RenderJob,
        key: &str,
        failed: Vec<(i64, String)>,
    ) -> Result<(), SourceError> {
        self.store
            .batch_rendered(job, key, &failed, self.clock.now_ms())
            .await
            .map_err(|e| SourceError::Unavailable(e.to_string()))?;
        self.metrics.render_done(&job.campaign_id, job.batch);
        Ok(())
    }
}
