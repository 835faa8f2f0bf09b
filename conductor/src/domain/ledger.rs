//! The minute ledger's arithmetic: how many tokens a claim gets and when each may be spent. Pure; the
//! store applies it atomically to one `(scope, minute)` row.
//!
//! Each row carries a *slot line*: the moment the next token may be spent. A claim takes the next
//! `grant` slots, spaced so that what is left of the minute's budget is spread evenly over what is left
//! of the minute (less a safety margin). Successive claims, from any number of senders, therefore
//! continue one evenly spaced line instead of each bursting its own share.

use sender::clock::{minute_end, minute_start, Millis};
use sender::lease::HEARTBEAT_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteRow {
    pub minute: Millis,
    /// Fixed when the minute's row is created: a cap change applies from the next minute.
    pub cap: u32,
    pub granted: u32,
    pub next_slot: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub tokens: u32,
    pub minute: Millis,
    pub first_at: Millis,
    pub spacing_us: i64,
    /// The minute's deadline: no token may be spent at or after it.
    pub deadline: Millis,
    /// When this grant's last slot is past by a little slack (never after `deadline`): a sender still
    /// behind its slots by then hands the rest back, and the lease can be judged lost soon after.
    pub spend_by: Millis,
}

/// At most this much of the slot line goes to one grant, so a pause or cancel takes effect within it
/// and a sender that dies leaves at most this much of its lease in doubt.
pub const MAX_SPAN_MS: Millis = 5_000;
/// How far behind its slots a sender may fall before the rest of its grant is forfeit.
pub const SPEND_SLACK_MS: Millis = 2_000;

/// Claims up to `want` tokens at `now` from one scope. `row` is this minute's row if it exists (a row
/// of another minute is ignored: unused tokens are forfeit at the minute's end); `cap_now` is the
/// configured cap, used only when the minute's row is created.
pub fn claim(
    row: Option<MinuteRow>,
    cap_now: u32,
    want: u32,
    now: Millis,
    margin_ms: Millis,
) -> (Grant, MinuteRow) {
    let (grant, mut rows) = claim_all(&[(row, cap_now)], want, now, margin_ms);
    (grant, rows.remove(0))
}

/// Claims up to `want` tokens at `now` from every scope that applies (the provider account, the
/// campaign's own cap, the recipients' domain): the grant is what all of them allow, slotted no
/// earlier and no closer together than any of their lines. Each scope's line advances at its own
/// pace, so a slow scope (a campaign capped at 1,000/min) does not hold back the fast one it shares
/// (the global line other campaigns use too); every scope's `granted` still never passes its cap.
/// Returns the grant and each scope's new row, in the order given.
pub fn claim_all(
    scopes: &[(Option<MinuteRow>, u32)],
    want: u32,
    now: Millis,
    margin_ms: Millis,
) -> (Grant, Vec<MinuteRow>) {
    let minute = minute_start(now);
    let deadline = minute_end(now) - margin_ms;
    let rows: Vec<MinuteRow> = scopes
        .iter()
        .map(|&(row, cap_now)| {
            row.filter(|r| r.minute == minute).unwrap_or(MinuteRow {
                minute,
                cap: cap_now,
                granted: 0,
                next_slot: minute,
            })
        })
        .collect();
    let lefts: Vec<u32> = rows
        .iter()
        .map(|r| r.cap.saturating_sub(r.granted))
        .collect();
    let left = lefts.iter().copied().min().unwrap_or(0);
    let tokens = if now >= deadline { 0 } else { want.min(left) };
    if tokens == 0 {
        let none = Grant {
            tokens: 0,
            minute,
            first_at: now,
            spacing_us: 0,
            deadline,
            spend_by: now,
        };
        return (none, rows);
    }
    // Each scope's own line: where it stands and the pace that spreads its budget over the rest.
    let lines: Vec<(Millis, i64)> = rows
        .iter()
        .zip(&lefts)
        .map(|(r, &l)| {
            let start = now.max(r.next_slot).min(deadline - 1);
            (start, (deadline - start) * 1000 / i64::from(l))
        })
        .collect();
    let start = lines.iter().map(|l| l.0).max().unwrap_or(now);
    let spacing_us = lines.iter().map(|l| l.1).max().unwrap_or(1).max(1);
    let span_limit = (MAX_SPAN_MS * 1000 / spacing_us).max(1);
    // A later start from one line and a slower pace from another may not fit every token.
    let fits = ((deadline - 1 - start) * 1000 / spacing_us + 1).max(1);
    let tokens = i64::from(tokens).min(span_limit).min(fits) as u32;
    let last_slot = start + i64::from(tokens - 1) * spacing_us / 1000;
    let grant = Grant {
        tokens,
        minute,
        first_at: start,
        spacing_us,
        deadline,
        spend_by: (last_slot + SPEND_SLACK_MS).min(deadline),
    };
    let next = rows
        .iter()
        .zip(&lines)
        .map(|(r, &(own_start, own_spacing))| MinuteRow {
            granted: r.granted + tokens,
            next_slot: own_start + i64::from(tokens) * own_spacing / 1000,
            ..*r
        })
        .collect();
    (grant, next)
}

/// Allowance for clock skew between hosts and for a report in transit when a sender fell silent.
pub const SILENCE_SLACK_MS: Millis = 1_000;

/// Splits the unreported recipients of a lease whose sender fell silent: those whose slot came before
/// the sender could have stopped (it is heard from within [`HEARTBEAT_MS`] before every send it starts,
/// so it started nothing slotted after `heard + HEARTBEAT_MS`, give or take the slack) may have been
/// sent and are in doubt; the others were certainly never started. `order` is the lease's recipients
/// in slot order. Returns `(in_doubt, never_started)`.
pub fn settle_silent_lease(
    order: &[i64],
    unreported: &[i64],
    first_at: Millis,
    spacing_us: i64,
    heard: Millis,
) -> (Vec<i64>, Vec<i64>) {
    let cutoff = heard + HEARTBEAT_MS + SILENCE_SLACK_MS;
    let mut in_doubt = Vec::new();
    let mut never_started = Vec::new();
    for (k, id) in order.iter().enumerate() {
        if !unreported.contains(id) {
            continue;
        }
        let slot = first_at + k as i64 * spacing_us / 1000;
        if slot > cutoff {
            never_started.push(*id);
        } else {
            in_doubt.push(*id);
        }
    }
    // Anything unreported that the order does not know is in doubt: never guess in its favour.
    in_doubt.extend(unreported.iter().filter(|id| !order.contains(id)));
    (in_doubt, never_started)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Millis = 1_700_000_040_000; // a minute boundary
    const MARGIN: Millis = 2_000;

    /// Applies claims the way the store does: one row per minute, kept between claims.
    struct Ledger {
        rows: Vec<MinuteRow>,
    }

    impl Ledger {
        fn new() -> Self {
            Self { rows: vec![] }
        }
        fn claim(&mut self, cap: u32, want: u32, now: Millis) -> Grant {
            let current = self
                .rows
                .iter()
                .copied()
                .find(|r| r.minute == minute_start(now));
            let (grant, row) = claim(current, cap, want, now, MARGIN);
            self.rows.retain(|r| r.minute != row.minute);
            self.rows.push(row);
            grant
        }
        /// Claims again and again at one instant until `want` is met or nothing more is granted —
        /// what a sender's lanes do when each asks for a lease.
        fn claim_up_to(&mut self, cap: u32, want: u32, now: Millis) -> u32 {
            let mut got = 0;
            while got < want {
                let g = self.claim(cap, want - got, now).tokens;
                if g == 0 {
                    break;
                }
                got += g;
            }
            got
        }
        fn row(&self, minute: Millis) -> MinuteRow {
            *self.rows.iter().find(|r| r.minute == minute).expect("row")
        }
    }

    #[test]
    fn grants_within_a_minute_never_exceed_the_cap() {
        let mut l = Ledger::new();
        let mut total = 0;
        let mut now = M;
        // Many small and large claims at irregular moments through one minute.
        while now < M + 60_000 {
            let want = 1 + ((now - M) as u32 * 7919) % 97;
            let g = l.claim(600, want, now);
            assert!(g.tokens <= want);
            total += g.tokens;
            now += 20 + (now % 13);
        }
        assert_eq!(total, 600);
        assert_eq!(l.row(M).granted, 600);
        assert_eq!(l.claim_up_to(600, 10, M + 30_000), 0);
    }

    #[test]
    fn the_budget_is_spread_evenly_over_the_rest_of_the_minute() {
        let g = claim(None, 600, 600, M, MARGIN).0;
        assert_eq!(g.first_at, M);
        assert_eq!(g.spacing_us, 58_000 * 1000 / 600);
        // Half-way through an idle minute the full cap is spread over the half that is left.
        let g = claim(None, 600, 600, M + 29_000, MARGIN).0;
        assert_eq!(g.spacing_us, 29_000 * 1000 / 600);
        assert!(g.first_at + 599 * g.spacing_us / 1000 < g.deadline);
        // And every token of a fully claimed minute has a slot before the deadline.
        let mut l = Ledger::new();
        assert_eq!(l.claim_up_to(600, 600, M + 29_000), 600);
        assert!(l.row(M).next_slot <= M + 58_000);
    }

    #[test]
    fn successive_claims_continue_one_slot_line() {
        let mut l = Ledger::new();
        let a = l.claim(6_000, 100, M);
        let b = l.claim(6_000, 100, M + 5);
        // Same pace (to integer rounding), and b starts where a ends rather than on top of it.
        assert!((a.spacing_us - b.spacing_us).abs() <= 2, "{a:?} {b:?}");
        assert_eq!(b.first_at, a.first_at + 100 * a.spacing_us / 1000);
    }

    #[test]
    fn one_grant_covers_at_most_a_few_seconds_of_the_line() {
        // 60/min is about one token a second: a grant of 50 is cut to the span.
        let g = claim(None, 60, 50, M, MARGIN).0;
        assert_eq!(g.tokens, (MAX_SPAN_MS * 1000 / g.spacing_us) as u32);
        assert!((5..=6).contains(&g.tokens), "{g:?}");
        // A very slow line still grants one token at a time.
        assert_eq!(claim(None, 1, 10, M, MARGIN).0.tokens, 1);
    }

    #[test]
    fn rollover_and_idle_minutes_start_fresh() {
        let mut l = Ledger::new();
        assert_eq!(l.claim_up_to(100, 500, M + 10_000), 100);
        assert_eq!(l.claim_up_to(100, 500, M + 20_000), 0);
        // Next minute: a full budget again; unused tokens of the last minute are not carried over.
        let g = l.claim(100, 5, M + 60_000);
        assert_eq!(
            (g.tokens, g.minute, g.first_at),
            (5, M + 60_000, M + 60_000)
        );
        // Three idle minutes later: nothing owed, nothing carried.
        assert_eq!(l.claim_up_to(100, 500, M + 5 * 60_000 + 1), 100);
        assert_eq!(l.row(M + 60_000).granted, 5);
    }

    #[test]
    fn a_cap_change_mid_minute_applies_from_the_next_minute() {
        let mut l = Ledger::new();
        assert_eq!(l.claim_up_to(100, 60, M), 60);
        // Raised to 1000 mid-minute: this minute stays at 100.
        assert_eq!(l.claim_up_to(1_000, 500, M + 30_000), 40);
        assert_eq!(l.row(M).cap, 100);
        assert_eq!(l.claim_up_to(1_000, 5_000, M + 60_000), 1_000);
        // Lowered to 10 mid-minute: this minute keeps 1000 (all granted), the next has 10.
        assert_eq!(l.claim_up_to(10, 5, M + 90_000), 0);
        assert_eq!(l.claim_up_to(10, 50, M + 120_000), 10);
        assert_eq!(l.row(M + 120_000).cap, 10);
    }

    #[test]
    fn a_grant_must_be_spent_soon_after_its_last_slot() {
        let g = claim(None, 600, 10, M, MARGIN).0;
        let last = g.first_at + 9 * g.spacing_us / 1000;
        assert_eq!(g.spend_by, last + SPEND_SLACK_MS);
        // Near the end of the minute the minute's deadline comes first.
        let g = claim(None, 600, 10, M + 57_000, MARGIN).0;
        assert_eq!(g.spend_by, g.deadline);
    }

    #[test]
    fn a_silent_lease_holds_only_what_may_have_started() {
        let order = [10, 11, 12, 13, 14, 15];
        // Slots one second apart from M; last heard at M + 1.5 s; 12 and 14 were reported.
        let (doubt, back) =
            settle_silent_lease(&order, &[10, 11, 13, 15, 99], M, 1_000_000, M + 1_500);
        // Cut-off M + 3.5 s: slots at 0, 1, 3 s may have started; 5 s cannot have.
        assert_eq!(doubt, vec![10, 11, 13, 99]);
        assert_eq!(back, vec![15]);
    }

    #[test]
    fn nothing_is_granted_inside_the_safety_margin() {
        let (g, row) = claim(None, 600, 10, M + 58_000, MARGIN);
        assert_eq!(g.tokens, 0);
        assert_eq!(row.granted, 0);
        let (g, _) = claim(None, 600, 10, M + 57_999, MARGIN);
        assert!(g.tokens >= 1);
        assert!(g.first_at < g.deadline);
    }

    #[test]
    fn a_row_from_another_minute_is_ignored() {
        let old = MinuteRow {
            minute: M,
            cap: 5,
            granted: 5,
            next_slot: M + 50_000,
        };
        let (g, row) = claim(Some(old), 600, 10, M + 60_000, MARGIN);
        assert_eq!(g.tokens, 10);
        assert_eq!((row.minute, row.cap, row.granted), (M + 60_000, 600, 10));
    }

    /// Claims against several scopes the way the store does, keeping each scope's rows.
    struct Scoped {
        rows: std::collections::HashMap<&'static str, MinuteRow>,
    }

    impl Scoped {
        fn new() -> Self {
            Self {
                rows: Default::default(),
            }
        }
        fn claim(&mut self, scopes: &[(&'static str, u32)], want: u32, now: Millis) -> Grant {
            let input: Vec<_> = scopes
                .iter()
                .map(|(s, cap)| (self.rows.get(s).copied(), *cap))
                .collect();
            let (g, rows) = claim_all(&input, want, now, MARGIN);
            for ((s, _), row) in scopes.iter().zip(rows) {
                self.rows.insert(s, row);
            }
            g
        }
    }

    #[test]
    fn nested_scopes_grant_what_every_scope_allows() {
        let mut l = Scoped::new();
        // Campaign A is capped at 100/min under a global 600; its domain at 300.
        let a = [
            ("global", 600),
            ("campaign:a", 100),
            ("domain:gmail.com", 300),
        ];
        let mut got = 0;
        let mut now = M;
        while now < M + 58_000 {
            got += l.claim(&a, 50, now).tokens;
            now += 500;
        }
        assert_eq!(got, 100, "the campaign's own cap binds");
        assert_eq!(l.rows["global"].granted, 100);
        // Campaign B, uncapped itself, shares the global line with A and gets the remaining 500.
        let b = [("global", 600)];
        let mut now = M;
        let mut got_b = 0;
        while now < M + 58_000 {
            got_b += l.claim(&b, 50, now).tokens;
            now += 250;
        }
        assert_eq!(got_b, 500);
        assert_eq!(l.rows["global"].granted, 600);
        assert_eq!(l.claim(&a, 50, M + 59_000).tokens, 0);
    }

    #[test]
    fn a_grant_follows_the_slowest_and_latest_line_and_fits_the_minute() {
        // The campaign line (100/min) is slower than the global one (6,000/min).
        let (g, rows) = claim_all(&[(None, 6_000), (None, 100)], 10, M, MARGIN);
        assert_eq!(g.spacing_us, 58_000 * 1000 / 100);
        assert!(g.first_at + i64::from(g.tokens - 1) * g.spacing_us / 1000 < g.deadline);
        // Each line advances at its own pace: the global one by the grant's tokens of its own slots.
        let t = i64::from(g.tokens);
        assert_eq!(rows[0].next_slot, M + t * (58_000 * 1000 / 6_000) / 1000);
        assert_eq!(rows[1].next_slot, M + t * g.spacing_us / 1000);
        assert_eq!((rows[0].granted, rows[1].granted), (g.tokens, g.tokens));
        // A line far ahead pushes the start; the slow pace then fits only what is left before the
        // deadline.
        let ahead = MinuteRow {
            minute: M,
            cap: 6_000,
            granted: 10,
            next_slot: M + 50_000,
        };
        let (g, _) = claim_all(&[(Some(ahead), 6_000), (None, 100)], 50, M + 1_000, MARGIN);
        assert_eq!(g.first_at, M + 50_000);
        assert!(g.tokens >= 1);
        assert!(g.first_at + i64::from(g.tokens - 1) * g.spacing_us / 1000 < g.deadline);
    }

    #[test]
    fn an_exhausted_scope_grants_nothing_and_changes_no_line() {
        let full = MinuteRow {
            minute: M,
            cap: 5,
            granted: 5,
            next_slot: M + 20_000,
        };
        let (g, rows) = claim_all(&[(None, 600), (Some(full), 5)], 10, M + 1_000, MARGIN);
        assert_eq!(g.tokens, 0);
        assert_eq!(rows[0].granted, 0);
        assert_eq!(rows[1], full);
    }
}
