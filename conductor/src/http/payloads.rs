//! The typed bodies of the campaign routes in [`api`](crate::http::api): what they read and what
//! they answer. The OpenAPI document's schemas are generated from these types.

use serde::{Deserialize, Serialize};

use crate::domain::recipient::RecipientState;
use crate::store::Campaign;

/// A campaign just made, or a draft just given its list.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Created {
    #[serde(flatten)]
    pub campaign: Campaign,
    /// Things that will not stop the send but a sender should know (a column no template uses…).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `GET /v1/campaigns`.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct CampaignList {
    pub campaigns: Vec<Campaign>,
}

/// A page of `GET /v1/campaigns/{id}/recipients`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RecipientPage {
    pub recipients: Vec<crate::store::RecipientRow>,
    /// The `after` of the next page; `null` on the last one.
    pub next_after: Option<i64>,
}

/// `POST /v1/campaigns/{id}/retry`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Some of `failed` and `unknown`.
    #[schemars(schema_with = "retryable_states")]
    pub states: Vec<String>,
}

fn retryable_states(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = RecipientState::RETRYABLE
        .iter()
        .map(|s| s.as_str())
        .collect();
    schemars::json_schema!({"type": "array", "items": {"type": "string", "enum": names}})
}

/// What `POST /v1/campaigns/{id}/retry` did.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Requeued {
    /// Recipients put back in the queue.
    pub requeued: u64,
    pub campaign: Campaign,
}

/// `GET /v1/minutes`: the ledger of one scope, minute by minute.
#[derive(Serialize, schemars::JsonSchema)]
pub struct MinuteList {
    pub minutes: Vec<crate::store::MinuteStats>,
}
