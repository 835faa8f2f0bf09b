//! AIMD under provider throttling. Pure: the conductor feeds it what senders report and asks it for
//! the per-minute cap to grant.
//!
//! A provider that answers 429 has a limit of its own below the configured cap (a per-second burst
//! limit, a shared account, a warming IP). Sending at the configured rate anyway turns tokens into
//! deferrals that come back and throttle again. So when the share of recent requests answered 429
//! crosses `trigger`, the effective rate is cut multiplicatively, and each minute's worth of
//! successful sends wins back a fixed step, like TCP's congestion window — never above the
//! configured cap. The share is a moving average over about the last 50 requests, so a stray 429
//! (which any provider answers now and then) does not halve a campaign's speed; a real limit, which
//! answers 429 to nearly everything, cuts within a dozen requests.

/// Weight of one request in the moving average of the throttled share (memory ≈ 1/ALPHA requests).
const ALPHA: f64 = 0.02;

use serde::Deserialize;

use renderer::deploy::config::{invalid, ConfigError};
use sender::clock::Millis;

/// `[governor.throttle]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    pub enabled: bool,
    /// The share of recent requests answered 429 at which the rate is cut.
    pub trigger: f64,
    /// The effective cap is multiplied by this at each cut.
    pub decrease: f64,
    /// A minute's worth of successful sends adds this fraction of the configured cap back.
    pub recover: f64,
    /// 429s within this long of a cut belong to the same burst: they answer sends made before the
    /// cut could take effect.
    pub hold_ms: u64,
    /// The effective cap never goes below this fraction of the configured cap (at least 1/min).
    pub floor: f64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            trigger: 0.2,
            decrease: 0.7,
            recover: 0.1,
            hold_ms: 10_000,
            floor: 0.05,
        }
    }
}

impl ThrottleConfig {
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(self.trigger > 0.0 && self.trigger <= 1.0) {
            return Err(invalid(
                "governor.throttle.trigger",
                "must be above 0 and at most 1, e.g. 0.2",
            ));
        }
        if !(self.decrease > 0.0 && self.decrease < 1.0) {
            return Err(invalid(
                "governor.throttle.decrease",
                "must be between 0 and 1 (exclusive), e.g. 0.7",
            ));
        }
        if !(self.recover > 0.0 && self.recover <= 1.0) {
            return Err(invalid(
                "governor.throttle.recover",
                "must be above 0 and at most 1, e.g. 0.1",
            ));
        }
        if !(self.floor > 0.0 && self.floor <= 1.0) {
            return Err(invalid(
                "governor.throttle.floor",
                "must be above 0 and at most 1, e.g. 0.05",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Aimd {
    /// The effective cap; `None` while nothing has been throttled (the configured cap applies).
    effective: Option<f64>,
    last_cut: Option<Millis>,
    /// Moving average of the share of requests answered 429.
    share: f64,
}

/// What one report changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    None,
    /// Cut to this many per minute.
    Lowered(u32),
    /// Back at the configured cap.
    Recovered,
}

impl Aimd {
    /// The cap to grant under `configured`.
    pub fn cap(&self, configured: u32) -> u32 {
        match self.effective {
            Some(e) => (e.round() as u32).clamp(1, configured),
            None => configured,
        }
    }

    /// The moving average of the throttled share.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// Takes in one report: of `attempted` requests, `throttled` were answered 429 and `sent`
    /// accepted.
    pub fn observe(
        &mut self,
        cfg: &ThrottleConfig,
        configured: u32,
        (attempted, throttled, sent): (usize, usize, usize),
        now: Millis,
    ) -> Change {
        if !cfg.enabled {
            self.effective = None;
            return Change::None;
        }
        if attempted > 0 {
            // `attempted` updates of the average at once, the throttled ones spread evenly.
            let keep = (1.0 - ALPHA).powi(attempted.min(10_000) as i32);
            let x = throttled.min(attempted) as f64 / attempted as f64;
            self.share = self.share * keep + x * (1.0 - keep);
        }
        let cap = f64::from(configured);
        let floor = (cap * cfg.floor).max(1.0);
        if throttled > 0 && self.share >= cfg.trigger {
            // 429s this soon after a cut answer requests made before it could take effect.
            let in_burst = self
                .last_cut
                .is_some_and(|t| now - t < cfg.hold_ms as i64 && now >= t);
            if in_burst {
                return Change::None;
            }
            let current = self.effective.unwrap_or(cap).min(cap);
            let next = (current * cfg.decrease).max(floor);
            self.last_cut = Some(now);
            if next < current {
                self.effective = Some(next);
                return Change::Lowered(self.cap(configured));
            }
            return Change::None;
        }
        let Some(current) = self.effective else {
            return Change::None;
        };
        // A full minute at the current rate earns one step.
        let step = cap * cfg.recover * sent as f64 / current.max(1.0);
        let next = current.min(cap) + step;
        if next >= cap {
            self.effective = None;
            Change::Recovered
        } else {
            self.effective = Some(next);
            Change::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig::default()
    }

    /// A report of `n` requests, all answered 429.
    fn throttled(n: usize) -> (usize, usize, usize) {
        (n, n, 0)
    }

    fn sent(n: usize) -> (usize, usize, usize) {
        (n, 0, n)
    }

    #[test]
    fn a_limit_that_answers_429_to_everything_cuts_within_a_dozen_requests_and_once_per_burst() {
        let mut a = Aimd::default();
        assert_eq!(a.cap(1000), 1000);
        let mut cut_after = None;
        for i in 1..=20 {
            if let Change::Lowered(cap) = a.observe(&cfg(), 1000, throttled(1), 0) {
                assert_eq!(cap, 700);
                cut_after = Some(i);
                break;
            }
        }
        assert!(matches!(cut_after, Some(9..=12)), "{cut_after:?}");
        // More 429s from the same burst (sends made before the cut) do not cut again.
        assert_eq!(a.observe(&cfg(), 1000, throttled(50), 9_999), Change::None);
        assert_eq!(a.cap(1000), 700);
        assert_eq!(
            a.observe(&cfg(), 1000, throttled(1), 10_000),
            Change::Lowered(490)
        );
    }

    #[test]
    fn stray_429s_among_accepted_sends_do_not_cut() {
        let mut a = Aimd::default();
        // One request in ten throttled, evenly spread, over 5,000 requests.
        for i in 0..500 {
            let change = a.observe(&cfg(), 1000, (10, 1, 9), i * 1_000);
            assert_eq!(change, Change::None, "at {i}");
        }
        assert!((a.share() - 0.1).abs() < 0.01, "{}", a.share());
        assert_eq!(a.cap(1000), 1000);
    }

    #[test]
    fn the_cap_never_falls_below_the_floor_nor_rises_above_the_configured_cap() {
        let mut a = Aimd::default();
        for i in 0..50 {
            a.observe(&cfg(), 1000, throttled(20), i * 10_000);
        }
        assert_eq!(a.cap(1000), 50);
        let mut tiny = Aimd::default();
        for i in 0..50 {
            tiny.observe(&cfg(), 3, throttled(20), i * 10_000);
        }
        assert_eq!(tiny.cap(3), 1, "at least one a minute");
        // A lower configured cap (edited live) bounds the effective one at once.
        assert_eq!(a.cap(20), 20);
    }

    #[test]
    fn success_recovers_additively_one_step_per_minute_of_sends() {
        let mut a = Aimd::default();
        a.observe(&cfg(), 1000, throttled(20), 0);
        assert_eq!(a.cap(1000), 700);
        // 700 successful sends (a minute at 700/min) earn 10 % of the configured cap.
        for _ in 0..7 {
            assert_eq!(a.observe(&cfg(), 1000, sent(100), 60_000), Change::None);
        }
        // Each step is earned at the rate of its moment, so seven chunks come to just under 100.
        assert!((790..800).contains(&a.cap(1000)), "{}", a.cap(1000));
        let mut changes = vec![];
        for _ in 0..40 {
            changes.push(a.observe(&cfg(), 1000, sent(100), 120_000));
        }
        assert!(changes.contains(&Change::Recovered), "{changes:?}");
        assert_eq!(a.cap(1000), 1000);
        assert_eq!(a.observe(&cfg(), 1000, sent(100), 130_000), Change::None);
    }

    #[test]
    fn disabled_means_the_configured_cap() {
        let mut a = Aimd::default();
        let off = ThrottleConfig {
            enabled: false,
            ..cfg()
        };
        assert_eq!(a.observe(&off, 1000, throttled(100), 0), Change::None);
        assert_eq!(a.cap(1000), 1000);
    }

    #[test]
    fn settings_are_checked() {
        assert!(cfg().check().is_ok());
        for (bad, key) in [
            (
                ThrottleConfig {
                    decrease: 1.0,
                    ..cfg()
                },
                "decrease",
            ),
            (
                ThrottleConfig {
                    decrease: 0.0,
                    ..cfg()
                },
                "decrease",
            ),
            (
                ThrottleConfig {
                    recover: 0.0,
                    ..cfg()
                },
                "recover",
            ),
            (
                ThrottleConfig {
                    floor: 1.5,
                    ..cfg()
                },
                "floor",
            ),
            (
                ThrottleConfig {
                    trigger: 0.0,
                    ..cfg()
                },
                "trigger",
            ),
            (
                ThrottleConfig {
                    decrease: f64::NAN,
                    ..cfg()
                },
                "decrease",
            ),
        ] {
            let e = bad.check().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
