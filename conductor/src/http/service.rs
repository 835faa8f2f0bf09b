//! What the API and the CLI do to campaigns, in one place.

use std::sync::Arc;

use crate::domain::recipient::RecipientState;
use crate::domain::validate::{self, CampaignRequest, Row, RowRules};
use crate::engine::events::Kind;
use crate::engine::ingest::{self, Source};
use crate::engine::work::Work;
use crate::http::problem::Problem;
use crate::store::{Action, Campaign, IdempotencyKey, Opened, Status, Store};

/// A campaign stored with no recipients yet, and the rules its rows are checked by.
pub enum Open {
    New {
        campaign: Campaign,
        rules: Arc<RowRules>,
    },
    /// What an earlier request with the same `Idempotency-Key` made.
    Replay(Campaign),
}

pub struct Service {
    pub store: Arc<dyn Store>,
    pub work: Arc<Work>,
    /// Largest campaign request with an inline list, fixed when the router is built.
    pub max_body_bytes: usize,
    /// Largest recipient list upload (CSV or NDJSON, streamed), fixed when the router is built.
    pub max_upload_bytes: u64,
    /// SES feedback through SNS, built from the live `[feedback.ses]` and built again when it changes.
    pub ses: std::sync::Mutex<Option<Arc<crate::engine::ses_intake::SesIntake>>>,
    pub sns_certs: Arc<dyn renderer::sns::CertFetcher>,
    /// Cancelled when the server begins to shut down: ends the event streams.
    pub streams: tokio_util::sync::CancellationToken,
}

impl Service {
    /// The SES intake for the `[feedback.ses]` in force now; `None` while it names no topics.
    pub fn ses_intake(&self) -> Option<Arc<crate::engine::ses_intake::SesIntake>> {
        let wanted = self.work.config.borrow().feedback.ses.clone();
        let mut cached = self.ses.lock().expect("ses intake poisoned");
        if cached.as_ref().map(|i| &i.built_from) != Some(&wanted) {
            *cached = crate::engine::ses_intake::SesIntake::new(&wanted, self.sns_certs.clone())
                .map(Arc::new);
        }
        cached.clone()
    }

    /// Checks a campaign's own fields (compiling its template off the async threads) and stores it
    /// with no recipients yet: `importing` (its list follows) or a `draft`. A retried request with
    /// the same `Idempotency-Key` gets the first one's campaign instead.
    pub async fn open(
        &self,
        req: CampaignRequest,
        status: Status,
        key: Option<IdempotencyKey>,
    ) -> Result<Open, Problem> {
        let (templates, safety, limits, batch_size, signed) = {
            let config = self.work.config.borrow();
            let c = &config.campaigns;
            (
                c.templates_dir.clone(),
                config.safety.clone(),
                c.render_limits(),
                c.batch_size,
                config.unsubscribe.links().is_some(),
            )
        };
        let prepared = tokio::task::spawn_blocking(move || {
            let prepared = validate::prepare(&req, &templates, &safety, limits)?;
            validate::check_links(&prepared, signed)?;
            Ok::<_, validate::Invalid>(prepared)
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "validation task failed");
            Problem::internal()
        })??;
        if !prepared.css_inlined {
            tracing::debug!("template CSS kept in <style>: it could not be inlined safely");
        }
        let opened = self
            .store
            .create_empty(
                &(&prepared).into(),
                batch_size,
                self.work.clock.now_ms(),
                status,
                key.as_ref(),
            )
            .await?;
        Ok(match opened {
            Opened::New(campaign) => Open::New {
                campaign,
                rules: Arc::new(prepared.rows),
            },
            Opened::Replay(campaign) => Open::Replay(campaign),
        })
    }

    /// The row rules of a stored campaign's template: for a draft taking a new list.
    pub async fn rules_of(&self, id: &str) -> Result<Arc<RowRules>, Problem> {
        let template = self.store.template(id).await?;
        let (safety, limits) = {
            let config = self.work.config.borrow();
            (config.safety.clone(), config.campaigns.render_limits())
        };
        let rules = tokio::task::spawn_blocking(move || RowRules::new(&template, &safety, limits))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "validation task failed");
                Problem::internal()
            })??;
        Ok(Arc::new(rules))
    }

    /// Imports a campaign's list and, when it is whole, starts the campaign (`start`) or leaves it
    /// a draft. On any problem the import is abandoned — a campaign being created is discarded, a
    /// draft keeps no part of the list — and the problem returned.
    pub async fn fill(
        &self,
        id: &str,
        rules: Arc<RowRules>,
        source: Source,
        start: bool,
    ) -> Result<(Campaign, Vec<String>), Problem> {
        let imported = self.import(id, rules, source).await?;
        self.finish(id, imported, start).await
    }

    /// The first half of [`Self::fill`]: the list stored, the import not yet finished (a caller with
    /// more of the request to read finishes it only once that is read too).
    pub async fn import(
        &self,
        id: &str,
        rules: Arc<RowRules>,
        source: Source,
    ) -> Result<ingest::Imported, Problem> {
        let clock = self.work.clock.clone();
        match ingest::import(&self.store, &clock, id, rules, source).await {
            Ok(i) => Ok(i),
            Err(e) => {
                self.abandon(id).await;
                Err(e.into())
            }
        }
    }

    /// The second half of [`Self::fill`].
    pub async fn finish(
        &self,
        id: &str,
        imported: ingest::Imported,
        start: bool,
    ) -> Result<(Campaign, Vec<String>), Problem> {
        let campaign = match self
            .store
            .finish_import(id, self.work.clock.now_ms(), start)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.abandon(id).await;
                return Err(e.into());
            }
        };
        tracing::info!(campaign = %id, recipients = imported.rows, duplicates = imported.duplicates, start, "recipient list imported");
        for w in &imported.warnings {
            tracing::warn!(campaign = %id, warning = %w, "campaign list imported with a warning");
        }
        self.work.changed(id);
        if start {
            self.work.wake.notify_one();
            self.work.events.emit(Kind::Created, id, None).await;
        }
        Ok((campaign, imported.warnings))
    }

    /// Gives up an import (see [`Store::abandon_import`]).
    pub async fn abandon(&self, id: &str) {
        if let Err(e) = self
            .store
            .abandon_import(id, self.work.clock.now_ms())
            .await
        {
            tracing::warn!(campaign = %id, error = %e, "import not abandoned yet; the reconcile loop will");
        }
        self.work.changed(id);
    }

    /// A whole campaign at once, its list in memory (inline JSON, the demo): [`Self::open`] then
    /// [`Self::fill`]. Returns the campaign and any warnings (a message over Gmail's clip, say).
    pub async fn create(
        &self,
        req: CampaignRequest,
        rows: Vec<Row>,
        key: Option<IdempotencyKey>,
    ) -> Result<(Campaign, Vec<String>, bool), Problem> {
        match self.open(req, Status::Importing, key).await? {
            Open::Replay(c) => Ok((c, Vec::new(), true)),
            Open::New { campaign, rules } => {
                let (c, warnings) = self
                    .fill(&campaign.id, rules, Source::Rows(rows), true)
                    .await?;
                Ok((c, warnings, false))
            }
        }
    }

    pub async fn start(&self, id: &str) -> Result<Campaign, Problem> {
        let before = self.store.campaign(id).await?.status;
        let c = self.store.start(id, self.work.clock.now_ms()).await?;
        self.work.changed(id);
        if before == Status::Draft {
            self.work.wake.notify_one();
            self.work.events.emit(Kind::Created, id, None).await;
        }
        Ok(c)
    }

    pub async fn act(&self, id: &str, action: Action) -> Result<Campaign, Problem> {
        let (c, changed) = self.store.act(id, action, self.work.clock.now_ms()).await?;
        self.changed(id);
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

    /// Queues a campaign's recipients in `states` (some of [`RecipientState::RETRYABLE`]) again, on
    /// an operator's request; returns how many, and the campaign.
    pub async fn retry(
        &self,
        id: &str,
        states: &[RecipientState],
    ) -> Result<(u64, Campaign), Problem> {
        let moved = self
            .store
            .retry(id, states, self.work.clock.now_ms())
            .await?;
        self.changed(id);
        tracing::info!(campaign = %id, recipients = moved, states = ?states, "recipients queued again on request");
        Ok((moved, self.store.campaign(id).await?))
    }

    /// Changes a campaign's own cap (`Some(None)` removes it) and priority, from the next minute.
    pub async fn set_limits(
        &self,
        id: &str,
        per_minute: Option<Option<u32>>,
        priority: Option<u32>,
    ) -> Result<Campaign, Problem> {
        let c = self
            .store
            .set_limits(id, per_minute, priority, self.work.clock.now_ms())
            .await?;
        self.changed(id);
        Ok(c)
    }

    /// What every action that changes a campaign ends with: its cached view and the event stream's
    /// kept frames are dropped, so the next read and the next client see the change, and the work
    /// loop is woken to act on it.
    fn changed(&self, id: &str) {
        self.work.changed(id);
        self.work.wake.notify_one();
    }
}
