//! When the next token of a lease may be spent. Pure: the worker asks, then sleeps on its clock.

use crate::clock::Millis;
use crate::lease::SendLease;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send now.
    Go,
    /// Too early: wait until then.
    WaitUntil(Millis),
    /// The minute's deadline has passed: the token is forfeit and the recipient goes back unsent.
    Expired,
}

/// Whether token `k` of `lease` may be spent at `now`.
pub fn next(lease: &SendLease, k: usize, now: Millis) -> Next {
    let slot = lease.slot(k);
    if now >= lease.deadline || slot >= lease.deadline {
        Next::Expired
    } else if now < slot {
        Next::WaitUntil(slot)
    } else {
        Next::Go
    }
}

/// How far apart, at most, the slots of the messages sharing one batched request are. A batch goes
/// out at its last message's slot, so no message leaves before its time and none waits longer than
/// this; at 6,000/min it is ~100 messages a request.
pub const BATCH_WINDOW_MS: Millis = 1_000;

/// The end (exclusive) of the batch that starts at token `k`: at most `limit` tokens, slotted within
/// [`BATCH_WINDOW_MS`] of the first and before the deadline. With `limit` 1, always `k + 1`.
pub fn batch_end(lease: &SendLease, k: usize, limit: usize) -> usize {
    let first = lease.slot(k);
    let mut end = k + 1;
    while end < lease.tokens()
        && end - k < limit
        && lease.slot(end) < lease.deadline
        && lease.slot(end) - first <= BATCH_WINDOW_MS
    {
        end += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(first_at: Millis, spacing_us: i64, tokens: usize, deadline: Millis) -> SendLease {
        SendLease {
            lease_id: "l".into(),
            campaign_id: "c".into(),
            batch: 0,
            body_key: "k".into(),
            recipients: (0..tokens as i64).collect(),
            minute: 0,
            first_at,
            spacing_us,
            deadline,
        }
    }

    #[test]
    fn tokens_are_spaced_and_never_spent_after_the_deadline() {
        let l = lease(1_000, 100_000, 5, 58_000);
        assert_eq!(next(&l, 0, 1_000), Next::Go);
        assert_eq!(next(&l, 1, 1_000), Next::WaitUntil(1_100));
        assert_eq!(next(&l, 4, 1_500), Next::Go);
        // A lease that outlives its minute cannot spend its tokens.
        assert_eq!(next(&l, 2, 58_000), Next::Expired);
        assert_eq!(next(&l, 2, 90_000), Next::Expired);
    }

    #[test]
    fn a_slot_past_the_deadline_is_expired_even_if_now_is_early() {
        let l = lease(57_900, 200_000, 3, 58_000);
        assert_eq!(next(&l, 0, 57_900), Next::Go);
        assert_eq!(next(&l, 1, 57_900), Next::Expired);
    }

    #[test]
    fn batches_hold_the_tokens_of_one_window_and_never_cross_the_deadline() {
        // 10 ms apart: a 1 s window holds 101 slots, the limit cuts first.
        let l = lease(0, 10_000, 300, 58_000);
        assert_eq!(batch_end(&l, 0, 1), 1);
        assert_eq!(batch_end(&l, 0, 500), 101);
        assert_eq!(batch_end(&l, 0, 50), 50);
        assert_eq!(batch_end(&l, 290, 500), 300);
        // Slots past the deadline stay out, so they are released, not sent late.
        let late = lease(57_500, 100_000, 10, 58_000);
        assert_eq!(batch_end(&late, 0, 500), 5);
    }
}
