//! Campaign lifecycle events, published to `[events.sns] topic_arn` when it is set.
//!
//! Schema (`"schema": "conductor.campaign-event/1"`), one JSON object per SNS message, with the
//! message attribute `event` carrying `kind` so subscriptions can filter on it:
//!
//! ```json
//! { "schema": "conductor.campaign-event/1",
//!   "id": "0190…",                 // unique per event (UUIDv7): deduplicate on it
//!   "kind": "created" | "started" | "paused" | "resumed" | "cancelled" | "completed" | "failed",
//!   "campaign_id": "…", "campaign_name": "…",
//!   "at": "2026-11-22T10:00:00.000Z",
//!   "reason": null | "…",         // why the system paused or stopped it
//!   "counts": { "total": 0, "sent": 0, "failed": 0, … } }
//! ```
//!
//! `started`: the campaign's first lease was granted. `failed`: the provider refused the account
//! (bad key, unverified domain, suspension), so the system paused the campaign; it stays paused until
//! someone resumes it. `completed`: every recipient reached a final state. Events are published at
//! most once per transition (each comes from a conditional update), best effort: a publish that fails
//! is logged, not retried.

use std::sync::Arc;

use async_trait::async_trait;
use sender::Clock;
use serde::Serialize;

use crate::store::{rfc3339, Counts, Store};

pub const SCHEMA: &str = "conductor.campaign-event/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Created,
    Started,
    Paused,
    Resumed,
    Cancelled,
    Completed,
    Failed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::Started => "started",
            Kind::Paused => "paused",
            Kind::Resumed => "resumed",
            Kind::Cancelled => "cancelled",
            Kind::Completed => "completed",
            Kind::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub schema: &'static str,
    pub id: String,
    pub kind: Kind,
    pub campaign_id: String,
    pub campaign_name: String,
    pub at: String,
    pub reason: Option<String>,
    pub counts: Counts,
}

#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn publish(&self, event: &Event) -> Result<(), String>;
}

pub struct SnsEvents {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsEvents {
    pub async fn connect(topic: &renderer::deploy::aws::SnsTopic) -> Self {
        Self {
            client: topic.client().await,
            topic_arn: topic.topic_arn.clone(),
        }
    }
}

#[async_trait]
impl EventSink for SnsEvents {
    async fn publish(&self, event: &Event) -> Result<(), String> {
        let kind = aws_sdk_sns::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(event.kind.as_str())
            .build()
            .map_err(|e| e.to_string())?;
        self.client
            .publish()
            .topic_arn(&self.topic_arn)
            .message(serde_json::to_string(event).map_err(|e| e.to_string())?)
            .message_attributes("event", kind)
            .send()
            .await
            .map_err(|e| renderer::deploy::aws::describe(&e))?;
        Ok(())
    }
}

/// Builds events from the store's view of a campaign and hands them to the sink off the caller's path.
pub struct Events {
    sink: Option<Arc<dyn EventSink>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl Events {
    pub fn new(
        sink: Option<Arc<dyn EventSink>>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { sink, store, clock }
    }

    pub async fn emit(&self, kind: Kind, campaign_id: &str, reason: Option<String>) {
        tracing::info!(campaign = %campaign_id, event = kind.as_str(), reason = reason.as_deref().unwrap_or(""), "campaign event");
        let Some(sink) = self.sink.clone() else {
            return;
        };
        let campaign = match self.store.campaign(campaign_id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(campaign = %campaign_id, error = %e, "event not published");
                return;
            }
        };
        let event = Event {
            schema: SCHEMA,
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            campaign_id: campaign.id,
            campaign_name: campaign.name,
            at: rfc3339(self.clock.now_ms()),
            reason,
            counts: campaign.counts,
        };
        tokio::spawn(async move {
            if let Err(e) = sink.publish(&event).await {
                tracing::warn!(campaign = %event.campaign_id, event = event.kind.as_str(), error = %e, "event not published");
            }
        });
    }
}
