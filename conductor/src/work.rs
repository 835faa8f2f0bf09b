//! The conductor's side of the worker contracts, in-process: it serves leases and render inputs from
//! the Store, and runs the reconcile step that hands out render jobs, expires silent leases, and
//! announces campaigns that started or finished.

use std::sync::Arc;

use async_trait::async_trait;
use renderer::{BodyStore, RenderInput, RenderJob, RenderSource, SourceError};
use sender::{Clock, LeaseReply, RecipientOutcome, WorkError, WorkSource};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::Dispatch;
use crate::events::{Events, Kind};
use crate::store::{LeaseRules, ReportRules, Store, StoreError};

pub struct Work {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub config: watch::Receiver<Arc<Config>>,
    pub dispatch: Arc<dyn Dispatch>,
    pub bodies: Arc<dyn BodyStore>,
    pub events: Events,
    /// Poked when there is something new to hand out (a campaign created or resumed).
    pub wake: Notify,
}

impl Work {
    fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
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
            .batches_to_render(now - redispatch, now, 10_000)
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
        let lost = self.store.expire_leases(now).await?;
        if lost > 0 {
            tracing::warn!(
                recipients = lost,
                "leases expired without a report; recipients marked unknown"
            );
        }
        for id in self.store.mark_started(now).await? {
            self.events.emit(Kind::Started, &id, None).await;
        }
        for id in self.store.complete_finished(now).await? {
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

#[async_trait]
impl WorkSource for Work {
    async fn lease(&self, want: usize) -> Result<LeaseReply, WorkError> {
        let cfg = self.config();
        let rules = LeaseRules {
            want: want.min(u32::MAX as usize) as u32,
            now: self.clock.now_ms(),
            cap: cfg.governor.per_minute,
            margin_ms: i64::from(cfg.governor.safety_margin_ms),
            // A request started at the last moment may take the provider timeout to answer, and its
            // report a few retries to arrive.
            ttl_ms: cfg.provider.timeout_ms as i64 + i64::from(cfg.workers.lease_grace_ms),
        };
        self.store
            .lease(rules)
            .await
            .map_err(|e| WorkError::Unavailable(e.to_string()))
    }

    async fn report(
        &self,
        lease_id: &str,
        outcomes: Vec<RecipientOutcome>,
        last: bool,
    ) -> Result<(), WorkError> {
        let rules = ReportRules {
            now: self.clock.now_ms(),
            max_attempts: self.config().campaigns.max_attempts,
        };
        let stop_reason = outcomes.iter().find_map(|o| match &o.outcome {
            sender::Outcome::AccountStop { reason } => Some(reason.clone()),
            _ => None,
        });
        match self.store.report(lease_id, &outcomes, last, rules).await {
            Ok(stopped) => {
                if let (Some(campaign), Some(reason)) = (stopped, stop_reason) {
                    self.events
                        .emit(Kind::Failed, &campaign, Some(reason))
                        .await;
                }
                if last {
                    // The campaign may have just finished: let reconcile close it now, not next tick.
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
            Ok(Some(input)) => Ok(input),
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
            .map_err(|e| SourceError::Unavailable(e.to_string()))
    }
}
