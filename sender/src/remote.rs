//! The send contract over HTTP, for `sender` processes on other hosts. The conductor serves these
//! routes; this crate owns their shapes and carries the client.
//!
//! Every call carries the workers' shared secret as a bearer token.

use std::sync::Arc;

use async_trait::async_trait;
use renderer::deploy::remote::{refusal, ConductorClient};
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, Millis};
use crate::lease::{LeaseReply, RecipientOutcome, WorkError, WorkSource};

pub const LEASES_PATH: &str = "/internal/v1/leases";

pub fn outcomes_path(lease_id: &str) -> String {
    format!("{LEASES_PATH}/{lease_id}/outcomes")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub want: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// The conductor's clock when it answered: times in `reply` are on that clock.
    pub now: Millis,
    pub reply: LeaseReply,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    pub outcomes: Vec<RecipientOutcome>,
    pub last: bool,
}

/// A conductor reached over HTTP, as a work source.
pub struct HttpWorkSource {
    conductor: ConductorClient,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for HttpWorkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.conductor.fmt(f)
    }
}

impl HttpWorkSource {
    pub fn new(base: &str, secret: String, clock: Arc<dyn Clock>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            conductor: ConductorClient::new(base, secret)?,
            clock,
        })
    }

    fn unavailable(e: impl std::fmt::Display) -> WorkError {
        WorkError::Unavailable(e.to_string())
    }
}

/// Moves the times of a reply from the conductor's clock to ours. `skew` is our clock minus theirs,
/// estimated at the midpoint of the request, so hosts whose clocks differ still pace on the same slots.
pub fn to_local(reply: LeaseReply, skew: Millis) -> LeaseReply {
    match reply {
        LeaseReply::Lease(mut l) => {
            l.first_at += skew;
            l.deadline += skew;
            LeaseReply::Lease(l)
        }
        LeaseReply::NoTokens { until } => LeaseReply::NoTokens {
            until: until + skew,
        },
        LeaseReply::Idle => LeaseReply::Idle,
    }
}

#[async_trait]
impl WorkSource for HttpWorkSource {
    async fn lease(&self, want: usize) -> Result<LeaseReply, WorkError> {
        let sent_at = self.clock.now_ms();
        let response = self
            .conductor
            .post(LEASES_PATH, &LeaseRequest { want })
            .await
            .map_err(Self::unavailable)?;
        if !response.status().is_success() {
            return Err(Self::unavailable(refusal(response).await));
        }
        let answer: LeaseResponse = response.json().await.map_err(Self::unavailable)?;
        let midpoint = (sent_at + self.clock.now_ms()) / 2;
        Ok(to_local(answer.reply, midpoint - answer.now))
    }

    async fn report(
        &self,
        lease_id: &str,
        outcomes: Vec<RecipientOutcome>,
        last: bool,
    ) -> Result<(), WorkError> {
        let response = self
            .conductor
            .post(&outcomes_path(lease_id), &ReportRequest { outcomes, last })
            .await
            .map_err(Self::unavailable)?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            409 => Err(WorkError::LeaseLost(lease_id.to_string())),
            _ => Err(Self::unavailable(refusal(response).await)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::SendLease;

    #[test]
    fn replies_move_onto_the_local_clock() {
        let lease = SendLease {
            lease_id: "l".into(),
            campaign_id: "c".into(),
            batch: 0,
            body_key: "k".into(),
            recipients: vec![1],
            minute: 60_000,
            first_at: 61_000,
            spacing_us: 1_000,
            deadline: 118_000,
        };
        match to_local(LeaseReply::Lease(lease), -250) {
            LeaseReply::Lease(l) => assert_eq!(
                (l.minute, l.first_at, l.deadline),
                (60_000, 60_750, 117_750)
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            to_local(LeaseReply::NoTokens { until: 120_000 }, 40),
            LeaseReply::NoTokens { until: 120_040 }
        );
    }
}
