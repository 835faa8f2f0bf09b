//! The render worker: a step function (`render_one`) and a loop that feeds it jobs.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::batch::{RenderedBatch, RenderedMessage, FORMAT_VERSION};
use crate::body_store::{BodyError, BodyStore};
use crate::job::{context, RenderInput, RenderJob, RenderSource, SourceError};
use crate::template::{CompiledTemplate, TemplateError};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("template no longer compiles: {0}")]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Codec(#[from] crate::batch::BatchCodecError),
    #[error("render task failed: {0}")]
    Join(String),
}

/// Renders every recipient of one batch. Pure and CPU-bound: callers run it off the async threads.
/// Recipients whose data no longer fits are returned as failures instead of failing the batch.
pub fn render_batch(
    job: &RenderJob,
    input: &RenderInput,
    template: &CompiledTemplate,
) -> (RenderedBatch, Vec<(i64, String)>) {
    let mut messages = Vec::with_capacity(input.recipients.len());
    let mut failed = Vec::new();
    let mut recipients: Vec<_> = input.recipients.iter().collect();
    recipients.sort_by_key(|r| r.id);
    for r in recipients {
        match template.render(context(r)) {
            Ok(parts) => {
                // The text part was derived before: its links stay as written.
                let html = r.tracked(parts.html);
                let size = parts.subject.len() + html.len() + parts.text.len();
                if size > input.limits.max_message_bytes {
                    failed.push((
                        r.id,
                        format!(
                            "the message is {size} bytes once its links are tracked, over the limit of {} ([campaigns] max_message_bytes)",
                            input.limits.max_message_bytes
                        ),
                    ));
                    continue;
                }
                messages.push(RenderedMessage {
                    recipient_id: r.id,
                    to: r.email.clone(),
                    to_name: r.name.clone(),
                    subject: parts.subject,
                    html,
                    text: parts.text,
                    list_unsubscribe: r.unsubscribe.as_ref().map(|u| u.header()),
                })
            }
            Err(e) => failed.push((r.id, e.to_string())),
        }
    }
    let batch = RenderedBatch {
        version: FORMAT_VERSION,
        campaign_id: job.campaign_id.clone(),
        batch: job.batch,
        from: input.from.clone(),
        reply_to: input.reply_to.clone(),
        headers: Default::default(),
        messages,
    };
    (batch, failed)
}

/// How many campaigns' compiled templates a worker keeps; compiling is the expensive part of a job.
const TEMPLATE_CACHE: usize = 8;

pub struct Renderer {
    source: Arc<dyn RenderSource>,
    bodies: Arc<dyn BodyStore>,
    templates: Mutex<Vec<(String, Arc<CompiledTemplate>)>>,
}

impl Renderer {
    pub fn new(source: Arc<dyn RenderSource>, bodies: Arc<dyn BodyStore>) -> Self {
        Self {
            source,
            bodies,
            templates: Mutex::new(Vec::new()),
        }
    }

    fn cached(&self, campaign_id: &str) -> Option<Arc<CompiledTemplate>> {
        let cache = self.templates.lock().expect("template cache poisoned");
        cache
            .iter()
            .find(|(id, _)| id == campaign_id)
            .map(|(_, t)| t.clone())
    }

    fn remember(&self, campaign_id: &str, t: Arc<CompiledTemplate>) {
        let mut cache = self.templates.lock().expect("template cache poisoned");
        if cache.len() >= TEMPLATE_CACHE {
            cache.remove(0);
        }
        cache.push((campaign_id.to_string(), t));
    }

    /// One job, start to finish: load, render, write the object, report. Safe to repeat: the same
    /// input renders the same bytes at the same key.
    pub async fn render_one(&self, job: &RenderJob) -> Result<usize, WorkerError> {
        let input = self.source.load(job).await?;
        let cached = self.cached(&job.campaign_id);
        let job2 = job.clone();
        let (template, bytes, failed, count) = tokio::task::spawn_blocking(move || {
            let template = match cached {
                Some(t) => t,
                None => Arc::new(CompiledTemplate::compile_with(
                    &input.template,
                    input.limits,
                )?),
            };
            let (batch, failed) = render_batch(&job2, &input, &template);
            let bytes = batch.encode()?;
            Ok::<_, WorkerError>((template, bytes, failed, batch.messages.len()))
        })
        .await
        .map_err(|e| WorkerError::Join(e.to_string()))??;
        self.remember(&job.campaign_id, template);
        let key = RenderedBatch::key(&job.campaign_id, job.batch);
        self.bodies.put(&key, bytes).await?;
        self.source.rendered(job, &key, failed).await?;
        Ok(count)
    }

    /// Takes jobs until the channel closes. A failed job is logged and left for the conductor's
    /// reconcile loop to hand out again: the store, not this loop, is the truth.
    pub async fn run(
        self: Arc<Self>,
        jobs: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<RenderJob>>>,
    ) {
        loop {
            let job = { jobs.lock().await.recv().await };
            let Some(job) = job else { return };
            match self.render_one(&job).await {
                Ok(n) => {
                    tracing::debug!(campaign = %job.campaign_id, batch = job.batch, messages = n, "rendered")
                }
                Err(WorkerError::Source(SourceError::Gone(why))) => {
                    tracing::debug!(campaign = %job.campaign_id, batch = job.batch, %why, "render job dropped")
                }
                Err(e) => {
                    tracing::warn!(campaign = %job.campaign_id, batch = job.batch, error = %e, "render failed")
                }
            }
        }
    }
}
