//! A test send, carried out: the checks of `domain/test_send.rs`, this minute's tokens from the
//! ledger, the message rendered as the preview renders it, and one request per address through the
//! campaign's provider behind the live sandbox guard.

use std::sync::Arc;

use renderer::RenderInput;
use sender::provider::OutgoingMessage;

use crate::domain::preview;
use crate::domain::test_send::{self, TestOutcome, TestResult, TestSendReport, TestSendRequest};
use crate::domain::validate::{self, field, Invalid, Row};
use crate::engine::work::Work;
use crate::store::{rfc3339, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TestSendError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This minute has fewer tokens left than the test needs; the next minute opens at `until`.
    #[error("this minute's sending budget cannot take {wanted} more messages")]
    NoTokens {
        wanted: usize,
        until: sender::Millis,
    },
    #[error("the provider is not usable: {0}")]
    Provider(String),
    #[error("render task failed: {0}")]
    Join(String),
}

/// Sends `req`'s test of campaign `id` and says what became of each address. Nothing about the
/// campaign changes: no recipient, no count, no event.
pub async fn send(
    work: &Arc<Work>,
    id: &str,
    req: TestSendRequest,
) -> Result<TestSendReport, TestSendError> {
    let cfg = work.config();
    let campaign = work.store.campaign(id).await?;
    let to = test_send::addresses(&req, &cfg.safety)?;
    let keys: Vec<String> = to.iter().map(|e| sender::safety::canonical(e)).collect();
    test_send::suppressed(&to, &work.store.suppressed(&keys).await?)?;
    let input = sample(work, id, &req).await?;

    let limits = cfg.campaigns.render_limits();
    let links = cfg
        .unsubscribe
        .links()
        .map(|l| (l.preview_link(), l.preview_web_url()));
    let (from, reply_to) = (input.from.clone(), input.reply_to.clone());
    let shown = tokio::task::spawn_blocking(move || preview::stored(&input, limits, links, None))
        .await
        .map_err(|e| TestSendError::Join(e.to_string()))??;
    let test_id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let batch = test_send::batch(id, test_id, &from, reply_to.as_ref(), &shown, &to);

    let provider = sender::safety::Safety::guard_live(
        cfg.provider
            .build(work.clock.clone())
            .map_err(|e| TestSendError::Provider(e.to_string()))?,
        {
            let live = work.config.clone();
            Arc::new(move || live.borrow().safety.clone())
        },
    );
    let now = work.clock.now_ms();
    let margin = i64::from(cfg.governor.safety_margin_ms);
    let Some(minute) = work
        .store
        .take_test_tokens(to.len() as u32, work.cap_at(&cfg, now), now, margin)
        .await?
    else {
        return Err(TestSendError::NoTokens {
            wanted: to.len(),
            until: sender::clock::minute_end(now),
        });
    };
    // The tokens are this minute's: a request that would start after its deadline is not made.
    let deadline = sender::clock::minute_end(minute) - margin;
    let (mut attempted, mut sent) = (0u32, 0u32);
    let mut results = Vec::with_capacity(to.len());
    for message in &batch.messages {
        let outcome = if work.clock.now_ms() < deadline {
            provider
                .send(OutgoingMessage {
                    batch: &batch,
                    message,
                })
                .await
        } else {
            sender::Outcome::Released
        };
        attempted += u32::from(outcome.attempted());
        sent += u32::from(matches!(outcome, sender::Outcome::Sent { .. }));
        let (outcome, provider_id, reason) = TestOutcome::of(&outcome);
        results.push(TestResult {
            to: message.to.clone(),
            outcome,
            provider_id,
            reason,
        });
    }
    work.store
        .settle_test_tokens(minute, attempted, sent)
        .await?;
    tracing::info!(campaign = %id, name = %campaign.name, addresses = to.len(), sent, "test sent");
    Ok(TestSendReport {
        minute: rfc3339(minute),
        subject: batch
            .messages
            .first()
            .map(|m| m.subject.clone())
            .unwrap_or_default(),
        results,
    })
}

/// Whose data the test is rendered with: the named recipient, the data given, or the campaign's
/// first recipient.
async fn sample(
    work: &Work,
    id: &str,
    req: &TestSendRequest,
) -> Result<RenderInput, TestSendError> {
    if let Some(rid) = req.recipient_id {
        return Ok(work.store.message_input(id, rid).await?);
    }
    if let Some(given) = &req.recipient {
        let mut input = work.store.message_head(id).await?;
        let row = Row {
            at: "recipient".into(),
            recipient: given.clone(),
        };
        // The sample's own address is shown, never mailed: the sandbox is for `to`.
        let (_, data) = validate::check_row(row, &sender::safety::Safety::default())
            .map_err(|e| Invalid::Fields(vec![e]))?;
        input.recipients.push(data);
        return Ok(input);
    }
    let first = work.store.recipients(id, None, -1, 1).await?;
    match first.first() {
        Some(r) => Ok(work.store.message_input(id, r.id).await?),
        None => Err(Invalid::Fields(vec![field(
            "recipient",
            "the campaign has no recipients yet: give recipient data to render the test with",
        )])
        .into()),
    }
}
