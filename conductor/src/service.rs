//! What the API and the CLI do to campaigns, in one place.

use std::sync::Arc;

use crate::events::Kind;
use crate::problem::Problem;
use crate::store::{Action, Campaign, Store};
use crate::validate::{self, CampaignRequest, Row};
use crate::work::Work;

pub struct Service {
    pub store: Arc<dyn Store>,
    pub work: Arc<Work>,
    /// Largest campaign request, fixed when the router is built.
    pub max_body_bytes: usize,
    /// SES feedback through SNS, built from the live `[feedback.ses]` and built again when it changes.
    pub ses: std::sync::Mutex<Option<Arc<crate::feedback_api::SesIntake>>>,
    pub sns_certs: Arc<dyn renderer::sns::CertFetcher>,
    /// Watchers of campaigns that someone follows live.
    pub progress: crate::progress::Progress,
    /// Cancelled when the server begins to shut down: ends the event streams.
    pub streams: tokio_util::sync::CancellationToken,
}

impl Service {
    /// The SES intake for the `[feedback.ses]` in force now; `None` while it names no topics.
    pub fn ses_intake(&self) -> Option<Arc<crate::feedback_api::SesIntake>> {
        let wanted = self.work.config.borrow().feedback.ses.clone();
        let mut cached = self.ses.lock().expect("ses intake poisoned");
        if cached.as_ref().map(|i| &i.built_from) != Some(&wanted) {
            *cached =
                crate::feedback_api::SesIntake::new(&wanted, self.sns_certs.clone()).map(Arc::new);
        }
        cached.clone()
    }

    /// Validates everything, then stores the campaign in one transaction; nothing is stored otherwise.
    /// Returns the campaign and any warnings (a message over Gmail's clip, say).
    pub async fn create(
        &self,
        req: CampaignRequest,
        rows: Vec<Row>,
    ) -> Result<(Campaign, Vec<String>), Problem> {
        let (templates, safety, limits) = {
            let config = self.work.config.borrow();
            let c = &config.campaigns;
            (
                c.templates_dir.clone(),
                config.safety.clone(),
                c.render_limits(),
            )
        };
        // Compiling and trial-rendering a large list is CPU work: keep it off the async threads.
        let valid = tokio::task::spawn_blocking(move || {
            validate::validate(req, rows, &templates, &safety, limits)
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "validation task failed");
            Problem::internal()
        })??;
        if !valid.css_inlined {
            tracing::debug!("template CSS kept in <style>: it could not be inlined safely");
        }
        let batch_size = self.work.config.borrow().campaigns.batch_size;
        let campaign = self
            .store
            .create_campaign(&valid, batch_size, self.work.clock.now_ms())
            .await?;
        tracing::info!(campaign = %campaign.id, recipients = campaign.counts.total, duplicates = valid.duplicates, "campaign created");
        for w in &valid.warnings {
            tracing::warn!(campaign = %campaign.id, warning = %w, "campaign created with a warning");
        }
        self.work.wake.notify_one();
        self.work
            .events
            .emit(Kind::Created, &campaign.id, None)
            .await;
        Ok((campaign, valid.warnings))
    }

    pub async fn act(&self, id: &str, action: Action) -> Result<Campaign, Problem> {
        let (c, changed) = self.store.act(id, action, self.work.clock.now_ms()).await?;
        self.work.views.forget(id);
        self.work.wake.notify_one();
        if changed {
            let kind = match action {
                Action::Pause => Kind::Paused,
                Action::Resume => Kind::Resumed,
                Action::Cancel => Kind::Cancelled,
            };
            self.work.events.emit(kind, id, None).await;
        }
        Ok(c)
    }
}
