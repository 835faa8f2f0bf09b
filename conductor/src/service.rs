//! What the API and the CLI do to campaigns, in one place.

use std::path::PathBuf;
use std::sync::Arc;

use crate::events::Kind;
use crate::problem::Problem;
use crate::store::{Action, Campaign, Store};
use crate::validate::{self, CampaignRequest, Row};
use crate::work::Work;

pub struct Service {
    pub store: Arc<dyn Store>,
    pub work: Arc<Work>,
    pub templates_dir: PathBuf,
    pub max_body_bytes: usize,
    /// What remote workers must present; `None` closes the worker API.
    pub worker_secret: Option<String>,
    /// Sandbox mode: who may be mailed at all (checked again at send time).
    pub safety: sender::safety::Safety,
    /// Webhook secrets for delivery feedback.
    pub feedback: crate::feedback::FeedbackConfig,
    /// SES feedback through SNS, when `[feedback.ses]` names topics.
    pub ses: Option<crate::feedback_api::SesIntake>,
    /// Watchers of campaigns that someone follows live.
    pub progress: crate::progress::Progress,
    /// Cancelled when the server begins to shut down: ends the event streams.
    pub streams: tokio_util::sync::CancellationToken,
}

impl Service {
    /// Validates everything, then stores the campaign in one transaction; nothing is stored otherwise.
    pub async fn create(&self, req: CampaignRequest, rows: Vec<Row>) -> Result<Campaign, Problem> {
        let templates = self.templates_dir.clone();
        let safety = self.safety.clone();
        // Compiling and trial-rendering a large list is CPU work: keep it off the async threads.
        let valid =
            tokio::task::spawn_blocking(move || validate::validate(req, rows, &templates, &safety))
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
        self.work.wake.notify_one();
        self.work
            .events
            .emit(Kind::Created, &campaign.id, None)
            .await;
        Ok(campaign)
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
