//! One recipient's life: its states, and what a send's outcome or a silent sender does to it. Pure:
//! [`settle`] returns a [`Transition`] as data and the store applies it (and keeps its counters by
//! the states it names), so the rules are tested here without a database.

use sender::{Millis, Outcome};
use serde::Serialize;

use crate::domain::retry::retry_delay_ms;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RecipientState {
    /// Stored, its batch not rendered yet.
    Pending,
    /// Rendered and waiting for a lease.
    Rendered,
    /// Held by a sender's lease.
    Leased,
    /// Refused for now; waiting for its `retry_at`.
    Deferred,
    Sent,
    Failed,
    /// A send that may have reached the provider: never resent but on an operator's request.
    Unknown,
    /// On the suppression list: never mailed.
    Suppressed,
    Cancelled,
}

impl RecipientState {
    pub const ALL: [RecipientState; 9] = [
        Self::Pending,
        Self::Rendered,
        Self::Leased,
        Self::Deferred,
        Self::Sent,
        Self::Failed,
        Self::Unknown,
        Self::Suppressed,
        Self::Cancelled,
    ];

    /// The states from which a recipient may still be sent.
    pub const OPEN: [RecipientState; 4] =
        [Self::Pending, Self::Rendered, Self::Leased, Self::Deferred];

    /// The states an operator may send again: a permanent failure, or a send whose fate is unknown
    /// (which may then arrive twice — the operator's call, never the system's).
    pub const RETRYABLE: [RecipientState; 2] = [Self::Failed, Self::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Rendered => "rendered",
            Self::Leased => "leased",
            Self::Deferred => "deferred",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
            Self::Suppressed => "suppressed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_open(self) -> bool {
        Self::OPEN.contains(&self)
    }

    /// Where a recipient goes when it was not sent and may be again: back to the queue, unless its
    /// campaign was cancelled meanwhile.
    pub fn back(cancelled: bool) -> Self {
        if cancelled {
            Self::Cancelled
        } else {
            Self::Rendered
        }
    }
}

/// The rules a report is settled by (from `[campaigns]`).
#[derive(Debug, Clone, Copy)]
pub struct SettleRules {
    pub max_attempts: u32,
    /// `on_ambiguous = "resend"`: sends in doubt go back to the queue instead of `unknown`.
    pub resend_ambiguous: bool,
}

/// What one outcome does to a leased recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub to: RecipientState,
    pub reason: Option<String>,
    /// Kept if `None` (a provider id from an earlier attempt stays).
    pub provider_id: Option<String>,
    pub retry_at: Option<Millis>,
    /// A provider request was made: it spent a token and counts as an attempt.
    pub attempted: bool,
    /// What it does beyond the recipient.
    pub effect: Option<Effect>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The provider refused the account: the campaign pauses with this reason.
    PauseCampaign(String),
    /// The rendered batch could not be read: render it again (or give up, the store's count says).
    RenderAgain(String),
}

/// Settles a leased recipient that had made `attempts` provider requests before this outcome.
/// `jitter` in `[0, 1)` spreads the backoff of deferrals.
pub fn settle(
    outcome: &Outcome,
    attempts: u32,
    rules: SettleRules,
    cancelled: bool,
    now: Millis,
    jitter: f64,
) -> Transition {
    let back = RecipientState::back(cancelled);
    let mut t = Transition {
        to: back,
        reason: None,
        provider_id: None,
        retry_at: None,
        attempted: outcome.attempted(),
        effect: None,
    };
    let deferred = |t: &mut Transition, reason: String, retry_after_ms: Option<i64>| {
        let attempts = attempts + 1;
        if attempts >= rules.max_attempts {
            t.to = RecipientState::Failed;
            t.reason = Some(format!("gave up after {attempts} attempts; last: {reason}"));
        } else if cancelled {
            t.to = RecipientState::Cancelled;
            t.reason = Some(reason);
        } else {
            t.to = RecipientState::Deferred;
            t.retry_at = Some(now + retry_delay_ms(attempts, retry_after_ms, jitter));
            t.reason = Some(reason);
        }
    };
    match outcome {
        Outcome::Sent { provider_id } => {
            t.to = RecipientState::Sent;
            t.provider_id = provider_id.clone();
        }
        Outcome::Failed { reason } => {
            t.to = RecipientState::Failed;
            t.reason = Some(reason.clone());
        }
        Outcome::Unknown { reason } if rules.resend_ambiguous => deferred(
            &mut t,
            format!("in doubt, sent again (on_ambiguous = resend): {reason}"),
            None,
        ),
        Outcome::Unknown { reason } => {
            t.to = RecipientState::Unknown;
            t.reason = Some(reason.clone());
        }
        Outcome::Deferred {
            reason,
            retry_after_ms,
        }
        | Outcome::Throttled {
            reason,
            retry_after_ms,
        } => deferred(&mut t, reason.clone(), *retry_after_ms),
        Outcome::AccountStop { reason } => {
            t.reason = Some(reason.clone());
            t.effect = Some(Effect::PauseCampaign(format!(
                "provider refused the account: {reason}"
            )));
        }
        Outcome::Released => {}
        Outcome::Unreadable { reason } => t.effect = Some(Effect::RenderAgain(reason.clone())),
    }
    t
}

/// A recipient whose sender fell silent before reporting it. One that may have been started
/// (`in_doubt`) is held as `unknown` — never resent silently — unless `resend_ambiguous`; one slotted
/// after the sender could have stopped goes back to the queue.
pub fn silent(
    in_doubt: bool,
    resend_ambiguous: bool,
    cancelled: bool,
) -> (RecipientState, Option<&'static str>) {
    let back = RecipientState::back(cancelled);
    match (in_doubt, resend_ambiguous && !cancelled) {
        (false, _) => (back, None),
        (true, true) => (
            back,
            Some("sender fell silent; this send may have started and is sent again (on_ambiguous = resend)"),
        ),
        (true, false) => (
            RecipientState::Unknown,
            Some("sender fell silent; this send may have started"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecipientState::*;

    const RULES: SettleRules = SettleRules {
        max_attempts: 3,
        resend_ambiguous: false,
    };

    fn deferral() -> Outcome {
        Outcome::Deferred {
            reason: "421 try later".into(),
            retry_after_ms: None,
        }
    }

    #[test]
    fn states_round_trip_and_open_ones_are_the_sendable_ones() {
        for s in RecipientState::ALL {
            assert_eq!(RecipientState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert_eq!(RecipientState::parse("Sent"), None);
        let open: Vec<_> = RecipientState::ALL
            .into_iter()
            .filter(|s| s.is_open())
            .collect();
        assert_eq!(open, [Pending, Rendered, Leased, Deferred]);
        assert!(RecipientState::RETRYABLE.iter().all(|s| !s.is_open()));
    }

    #[test]
    fn a_send_is_final_and_keeps_the_provider_id() {
        let t = settle(
            &Outcome::Sent {
                provider_id: Some("<m1@mg>".into()),
            },
            0,
            RULES,
            false,
            1_000,
            0.5,
        );
        assert_eq!(t.to, Sent);
        assert_eq!(t.provider_id.as_deref(), Some("<m1@mg>"));
        assert!(t.attempted && t.effect.is_none() && t.reason.is_none());
        // Even if the campaign was cancelled meanwhile: it was sent.
        assert_eq!(
            settle(&Outcome::Sent { provider_id: None }, 0, RULES, true, 0, 0.5).to,
            Sent
        );
    }

    #[test]
    fn deferrals_back_off_until_the_last_attempt_fails() {
        let first = settle(&deferral(), 0, RULES, false, 10_000, 0.5);
        assert_eq!(first.to, Deferred);
        assert_eq!(first.retry_at, Some(15_000));
        let second = settle(&deferral(), 1, RULES, false, 10_000, 0.5);
        assert_eq!(second.retry_at, Some(20_000));
        let last = settle(&deferral(), 2, RULES, false, 10_000, 0.5);
        assert_eq!(last.to, Failed);
        assert_eq!(
            last.reason.as_deref(),
            Some("gave up after 3 attempts; last: 421 try later")
        );
        assert_eq!(last.retry_at, None);
        let told = Outcome::Throttled {
            reason: "429".into(),
            retry_after_ms: Some(30_000),
        };
        let t = settle(&told, 0, RULES, false, 10_000, 0.9);
        assert_eq!((t.to, t.retry_at), (Deferred, Some(40_000)));
        assert!(t.attempted);
        // A deferral of a cancelled campaign's recipient ends it.
        assert_eq!(settle(&deferral(), 0, RULES, true, 0, 0.5).to, Cancelled);
    }

    #[test]
    fn a_send_in_doubt_is_held_unless_the_operator_chose_resend() {
        let doubt = Outcome::Unknown {
            reason: "timeout".into(),
        };
        let held = settle(&doubt, 0, RULES, false, 0, 0.5);
        assert_eq!(
            (held.to, held.reason.as_deref()),
            (Unknown, Some("timeout"))
        );
        let resend = SettleRules {
            resend_ambiguous: true,
            ..RULES
        };
        let again = settle(&doubt, 0, resend, false, 0, 0.5);
        assert_eq!(again.to, Deferred);
        assert!(again.reason.unwrap().contains("on_ambiguous = resend"));
        assert_eq!(settle(&doubt, 2, resend, false, 0, 0.5).to, Failed);
    }

    #[test]
    fn unattempted_recipients_go_back_and_carry_their_effect() {
        let released = settle(&Outcome::Released, 1, RULES, false, 0, 0.5);
        assert_eq!(released.to, Rendered);
        assert!(!released.attempted && released.effect.is_none());
        assert_eq!(
            settle(&Outcome::Released, 1, RULES, true, 0, 0.5).to,
            Cancelled
        );
        let stop = settle(
            &Outcome::AccountStop {
                reason: "401 forbidden".into(),
            },
            0,
            RULES,
            false,
            0,
            0.5,
        );
        assert_eq!(stop.to, Rendered);
        assert!(stop.attempted);
        assert_eq!(
            stop.effect,
            Some(Effect::PauseCampaign(
                "provider refused the account: 401 forbidden".into()
            ))
        );
        let unreadable = settle(
            &Outcome::Unreadable {
                reason: "zstd".into(),
            },
            0,
            RULES,
            false,
            0,
            0.5,
        );
        assert!(!unreadable.attempted);
        assert_eq!(unreadable.effect, Some(Effect::RenderAgain("zstd".into())));
    }

    #[test]
    fn a_silent_sender_leaves_what_may_have_started_in_doubt() {
        assert_eq!(silent(false, false, false), (Rendered, None));
        assert_eq!(silent(false, false, true), (Cancelled, None));
        assert_eq!(silent(true, false, false).0, Unknown);
        assert_eq!(silent(true, true, false).0, Rendered);
        // A cancelled campaign's doubtful send is not sent again: it stays in doubt.
        assert_eq!(silent(true, true, true).0, Unknown);
    }
}
