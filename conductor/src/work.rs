//! The conductor's side of the worker contracts, in-process: it serves leases and render inputs from
//! the Store, and runs the reconcile step that hands out render jobs and expires silent leases.

use std::sync::Arc;

use async_trait::async_trait;
use renderer::{RenderInput, RenderJob, RenderSource, SourceError};
use sender::{Clock, LeaseReply, RecipientOutcome, WorkError, WorkSource};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::{LeaseRules, ReportRules, Store, StoreError};

/// A render job handed out but not reported rendered after this long is handed out again.
pub const REDISPATCH_AFTER_MS: i64 = 5 * 60_000;

pub struct Work {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub config: watch::Receiver<Arc<Config>>,
    /// Poked when there is something new to hand out (a campaign created or resumed).
    pub wake: Notify,
}

impl Work {
    fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// One reconcile pass: hand out render jobs, expire silent leases, close finished campaigns.
    pub async fn reconcile(
        &self,
        jobs: &mpsc::UnboundedSender<RenderJob>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        for job in self
            .store
            .batches_to_render(now - REDISPATCH_AFTER_MS, now, 10_000)
            .await?
        {
            if jobs.send(job).is_err() {
                break; // workers are shutting down
            }
        }
        let lost = self.store.expire_leases(now).await?;
        if lost > 0 {
            tracing::warn!(
                recipients = lost,
                "leases expired without a report; recipients marked unknown"
            );
        }
        for id in self.store.complete_finished(now).await? {
            tracing::info!(campaign = %id, "campaign completed");
        }
        Ok(())
    }

    /// Reconciles every second, or at once when woken, until stopped.
    pub async fn run_reconcile(
        self: Arc<Self>,
        jobs: mpsc::UnboundedSender<RenderJob>,
        stop: CancellationToken,
    ) {
        loop {
            if let Err(e) = self.reconcile(&jobs).await {
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
        match self.store.report(lease_id, &outcomes, last, rules).await {
            Ok(()) => {
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
        match self.store.render_input(job).await {
            Ok(Some(input)) => Ok(input),
            Ok(None) => Err(SourceError::Gone(format!(
                "{}/{} needs no rendering",
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
