//! How render jobs reach renderers: an in-process channel (embedded) or an SNS topic (distributed).
//! Either way it is only a doorbell: the store records what was handed out, and a batch not reported
//! rendered in time is handed out again.

use async_trait::async_trait;
use futures::StreamExt;
use renderer::RenderJob;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("render workers have stopped")]
    Closed,
    #[error("SNS refused {failed} of {total} render jobs: {reason}")]
    Sns {
        failed: usize,
        total: usize,
        reason: String,
    },
}

#[async_trait]
pub trait Dispatch: Send + Sync + 'static {
    async fn send(&self, jobs: Vec<RenderJob>) -> Result<(), DispatchError>;
}

pub struct LocalDispatch(pub mpsc::UnboundedSender<RenderJob>);

#[async_trait]
impl Dispatch for LocalDispatch {
    async fn send(&self, jobs: Vec<RenderJob>) -> Result<(), DispatchError> {
        for job in jobs {
            self.0.send(job).map_err(|_| DispatchError::Closed)?;
        }
        Ok(())
    }
}

/// PublishBatch takes at most ten entries.
const SNS_BATCH: usize = 10;
/// PublishBatch calls in flight at once.
const SNS_CONCURRENCY: usize = 8;

pub struct SnsDispatch {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsDispatch {
    pub async fn connect(topic: &renderer::deploy::aws::SnsTopic) -> Self {
        Self {
            client: topic.client().await,
            topic_arn: topic.topic_arn.clone(),
        }
    }

    async fn publish(&self, chunk: &[RenderJob]) -> Result<(), String> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, job)| {
                aws_sdk_sns::types::PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(serde_json::to_string(job).expect("a render job serialises"))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .publish_batch()
            .topic_arn(&self.topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .map_err(|e| renderer::deploy::aws::describe(&e))?;
        match out.failed().first() {
            None => Ok(()),
            Some(f) => Err(format!(
                "{} entries failed, e.g. {}: {}",
                out.failed().len(),
                f.code(),
                f.message().unwrap_or("")
            )),
        }
    }
}

#[async_trait]
impl Dispatch for SnsDispatch {
    async fn send(&self, jobs: Vec<RenderJob>) -> Result<(), DispatchError> {
        let total = jobs.len();
        // Owned chunks: borrowed ones trip the compiler's higher-ranked lifetime check on Send.
        let chunks: Vec<Vec<RenderJob>> = jobs.chunks(SNS_BATCH).map(<[_]>::to_vec).collect();
        let results: Vec<(usize, Result<(), String>)> = futures::stream::iter(chunks)
            .map(|chunk| async move { (chunk.len(), self.publish(&chunk).await) })
            .buffer_unordered(SNS_CONCURRENCY)
            .collect()
            .await;
        let mut failed = 0;
        let mut reason = None;
        for (n, r) in results {
            if let Err(e) = r {
                failed += n;
                reason.get_or_insert(e);
            }
        }
        match reason {
            None => Ok(()),
            Some(reason) => Err(DispatchError::Sns {
                failed,
                total,
                reason,
            }),
        }
    }
}
