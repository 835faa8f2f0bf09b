//! When a campaign will finish, and what it would need to finish by a given time: a minute-by-minute
//! walk over the caps that bind it (its share of the global cap, its own cap, its domains' caps), the
//! calendar (quiet hours, warm-up, its window) and the share of requests that are deferred and must
//! be made again. Pure: the caller passes the rate of each minute as a function of the minute.

use sender::clock::{minute_start, Millis};

/// How far ahead a forecast looks; a campaign that would take longer has no ETA.
pub const HORIZON_MINUTES: i64 = 31 * 24 * 60;

/// The moment the last of `remaining` messages is sent, starting at `now`, when minute `m` (its first
/// millisecond) allows `rate(m)` provider requests and a share `deferral_rate` of requests is
/// deferred (and costs another request later). `None` beyond [`HORIZON_MINUTES`].
pub fn finish(
    remaining: u64,
    deferral_rate: f64,
    now: Millis,
    rate: impl Fn(Millis) -> u32,
) -> Option<Millis> {
    if remaining == 0 {
        return Some(now);
    }
    // Each recipient needs 1 / (1 - d) requests on average.
    let success = (1.0 - deferral_rate.clamp(0.0, 0.95)).max(0.05);
    let mut left = remaining as f64;
    let first = minute_start(now);
    for i in 0..HORIZON_MINUTES {
        let m = first + i * 60_000;
        // Only what is left of the minute in progress.
        let part = if i == 0 {
            (60_000 - (now - first)) as f64 / 60_000.0
        } else {
            1.0
        };
        let can = f64::from(rate(m)) * part * success;
        if can >= left && can > 0.0 {
            let start = if i == 0 { now } else { m };
            let within = (left / can) * (60_000.0 * part);
            return Some(start + within.ceil() as Millis);
        }
        left -= can;
    }
    None
}

/// The smallest per-minute rate (no more than `max`) at which `remaining` finishes by `deadline`,
/// given which minutes are open at all; `None` if even `max` is not enough.
pub fn rate_needed(
    remaining: u64,
    deferral_rate: f64,
    now: Millis,
    deadline: Millis,
    open: impl Fn(Millis) -> bool,
    max: u32,
) -> Option<u32> {
    let done_by = |cap: u32| {
        finish(
            remaining,
            deferral_rate,
            now,
            |m| if open(m) { cap } else { 0 },
        )
        .is_some_and(|t| t <= deadline)
    };
    if remaining == 0 {
        return Some(0);
    }
    if !done_by(max) {
        return None;
    }
    let (mut lo, mut hi) = (1u32, max);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if done_by(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ledger;

    const M: Millis = 1_700_000_040_000; // a minute boundary

    #[test]
    fn a_steady_cap_finishes_on_the_minute_it_should() {
        // 1,000 at 100/min from a minute boundary: ten minutes.
        assert_eq!(finish(1_000, 0.0, M, |_| 100), Some(M + 10 * 60_000));
        // Half the requests deferred: twice as long.
        assert_eq!(finish(1_000, 0.5, M, |_| 100), Some(M + 20 * 60_000));
        // Starting half-way through a minute, that minute gives half its cap.
        assert_eq!(finish(50, 0.0, M + 30_000, |_| 100), Some(M + 60_000));
        assert_eq!(finish(0, 0.0, M, |_| 0), Some(M));
        assert_eq!(finish(1, 0.0, M, |_| 0), None);
    }

    #[test]
    fn closed_minutes_add_nothing() {
        // Open only every other minute.
        let open = |m: Millis| ((m - M) / 60_000) % 2 == 0;
        let t = finish(300, 0.0, M, |m| if open(m) { 100 } else { 0 }).unwrap();
        assert_eq!(t, M + 5 * 60_000);
    }

    #[test]
    fn the_rate_needed_is_the_least_that_finishes_in_time() {
        let always = |_| true;
        assert_eq!(
            rate_needed(1_000, 0.0, M, M + 10 * 60_000, always, 100_000),
            Some(100)
        );
        assert_eq!(
            rate_needed(1_000, 0.0, M, M + 10 * 60_000, always, 99),
            None
        );
        // Only half the minutes open: twice the rate.
        let half = |m: Millis| ((m - M) / 60_000) % 2 == 0;
        assert_eq!(
            rate_needed(1_000, 0.0, M, M + 10 * 60_000, half, 100_000),
            Some(200)
        );
    }

    /// A simulated run: leases claim from the minute ledger every 500 ms at a 600/min cap and 20 %
    /// of requests come back deferred; the forecast made at the start lands within a minute of when
    /// the simulation finishes.
    #[test]
    fn the_forecast_matches_a_simulated_run() {
        let (cap, total, deferral) = (600u32, 5_000u64, 0.2);
        let forecast = finish(total, deferral, M, |_| cap).unwrap();
        let mut left = total;
        let mut row = None;
        let mut now = M;
        let mut requests = 0u64;
        while left > 0 {
            let (g, r) = ledger::claim(row, cap, 100, now, 2_000);
            row = Some(r);
            for _ in 0..g.tokens {
                requests += 1;
                // Every fifth request is deferred.
                if !requests.is_multiple_of(5) {
                    left = left.saturating_sub(1);
                }
                if left == 0 {
                    break;
                }
            }
            now += 500;
        }
        assert!(
            (forecast - now).abs() <= 60_000,
            "forecast {} min, simulated {} min",
            (forecast - M) / 60_000,
            (now - M) / 60_000
        );
    }
}
