//! When sending may happen and at what cap, by the calendar: warm-up ramps for a new sending domain,
//! quiet hours, and a campaign's own sending window, all in a named time zone. Pure: every function
//! takes the instant it is asked about, so DST changes and midnight are tested with a manual clock.
//!
//! Windows are wall-clock times in their zone, evaluated at each instant: on a DST change a window
//! "22:00–07:00" is still 22:00 to 07:00 on the clocks of the people it is for (one hour shorter or
//! longer in absolute time), which is what quiet hours mean.

use chrono::{Datelike, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use sender::clock::Millis;

/// A daily span of wall-clock time, `start` included, `end` excluded; across midnight when `end` is
/// earlier than `start` ("22:00-07:00").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Span {
    /// `"HH:MM-HH:MM"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not HH:MM-HH:MM"))?;
        let time = |t: &str| {
            NaiveTime::parse_from_str(t.trim(), "%H:%M")
                .map_err(|_| format!("{t:?} in {s:?} is not a time HH:MM"))
        };
        let span = Self {
            start: time(a)?,
            end: time(b)?,
        };
        if span.start == span.end {
            return Err(format!("{s:?} is empty: start and end are the same"));
        }
        Ok(span)
    }

    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M")
        )
    }
}

pub fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("{name:?} is not an IANA time zone (e.g. \"Europe/Berlin\")"))
}

fn local(tz: Tz, at: Millis) -> chrono::DateTime<Tz> {
    tz.timestamp_millis_opt(at)
        .single()
        .expect("a UTC instant has exactly one local time")
}

/// `[governor.schedule]`, as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// The zone quiet hours and warm-up days are counted in.
    pub timezone: String,
    /// The first day of the warm-up, a date in `timezone` ("2026-12-01").
    pub warmup_start: Option<String>,
    /// Per-minute caps for warm-up day 1, 2, …; from the day after the last, `[governor] per_minute`.
    /// Each is also bounded by `per_minute`.
    pub warmup: Vec<u32>,
    /// No sending in these daily spans ("22:00-07:00").
    pub quiet_hours: Vec<String>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            timezone: "UTC".into(),
            warmup_start: None,
            warmup: Vec::new(),
            quiet_hours: Vec::new(),
        }
    }
}

/// A checked [`ScheduleConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub tz: Tz,
    pub warmup: Option<(NaiveDate, Vec<u32>)>,
    pub quiet: Vec<Span>,
}

impl ScheduleConfig {
    /// Errors name the key.
    pub fn check(&self) -> Result<Schedule, (&'static str, String)> {
        let tz = parse_zone(&self.timezone).map_err(|e| ("governor.schedule.timezone", e))?;
        let warmup = match (&self.warmup_start, self.warmup.is_empty()) {
            (None, true) => None,
            (None, false) => {
                return Err((
                    "governor.schedule.warmup_start",
                    "is required with warmup: the date of day 1 (\"2026-12-01\")".into(),
                ))
            }
            (Some(_), true) => {
                return Err((
                    "governor.schedule.warmup",
                    "is required with warmup_start: the per-minute cap of each day, e.g. [500, 1000, 2000]".into(),
                ))
            }
            (Some(d), false) => {
                let day = NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d").map_err(|_| {
                    (
                        "governor.schedule.warmup_start",
                        format!("{d:?} is not a date YYYY-MM-DD"),
                    )
                })?;
                if let Some(i) = self.warmup.iter().position(|&c| c == 0) {
                    return Err((
                        "governor.schedule.warmup",
                        format!("day {} has cap 0: leave quiet periods to quiet_hours", i + 1),
                    ));
                }
                Some((day, self.warmup.clone()))
            }
        };
        let quiet = self
            .quiet_hours
            .iter()
            .map(|s| Span::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ("governor.schedule.quiet_hours", e))?;
        Ok(Schedule { tz, warmup, quiet })
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            tz: Tz::UTC,
            warmup: None,
            quiet: Vec::new(),
        }
    }
}

impl Schedule {
    /// The warm-up cap for the day `at` falls on (in the schedule's zone), if the warm-up has begun
    /// and not yet ended. Before day 1 the first day's cap applies: a new domain never starts fast.
    pub fn warmup_cap(&self, at: Millis) -> Option<u32> {
        let (first, caps) = self.warmup.as_ref()?;
        let today = local(self.tz, at).date_naive();
        let day = (today - *first).num_days().max(0) as usize;
        caps.get(day).copied()
    }

    pub fn quiet(&self, at: Millis) -> bool {
        let t = local(self.tz, at).time();
        self.quiet.iter().any(|s| s.contains(t))
    }

    /// The global cap of the minute `at` is in: the configured one, lowered by the warm-up; 0 in
    /// quiet hours.
    pub fn cap(&self, per_minute: u32, at: Millis) -> u32 {
        if self.quiet(at) {
            0
        } else {
            self.warmup_cap(at)
                .map_or(per_minute, |w| w.min(per_minute))
        }
    }
}

/// A campaign's own sending window: only between `start` and `end` wall-clock time in `timezone`,
/// optionally only on some weekdays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendWindow {
    /// `"HH:MM-HH:MM"`, across midnight if the end is earlier.
    #[schemars(example = "09:00-17:00")]
    pub hours: String,
    #[serde(default = "utc")]
    pub timezone: String,
    /// `["mon", "tue", …]`; empty means every day. A span across midnight belongs to the day it
    /// starts on.
    #[serde(default)]
    #[schemars(inner(regex(pattern = "^(mon|tue|wed|thu|fri|sat|sun)$")))]
    pub days: Vec<String>,
}

fn utc() -> String {
    "UTC".into()
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A checked [`SendWindow`].
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub span: Span,
    pub tz: Tz,
    /// Monday = 0; empty = every day.
    pub days: Vec<u32>,
}

impl SendWindow {
    /// Errors name the field.
    pub fn check(&self) -> Result<Window, (&'static str, String)> {
        let span = Span::parse(&self.hours).map_err(|e| ("window.hours", e))?;
        let tz = parse_zone(&self.timezone).map_err(|e| ("window.timezone", e))?;
        let days = self
            .days
            .iter()
            .map(|d| {
                DAYS.iter()
                    .position(|x| x.eq_ignore_ascii_case(d.trim()))
                    .map(|i| i as u32)
                    .ok_or_else(|| {
                        (
                            "window.days",
                            format!("{d:?} is not one of mon, tue, wed, thu, fri, sat, sun"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Window { span, tz, days })
    }
}

impl Window {
    pub fn open(&self, at: Millis) -> bool {
        let t = local(self.tz, at);
        if !self.span.contains(t.time()) {
            return false;
        }
        if self.days.is_empty() {
            return true;
        }
        // After midnight inside a span that began the evening before, the day is yesterday's.
        let date = if self.span.start > self.span.end && t.time() < self.span.end {
            t.date_naive().pred_opt().unwrap_or(t.date_naive())
        } else {
            t.date_naive()
        };
        self.days.contains(&date.weekday().num_days_from_monday())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Millis {
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .unwrap()
            .timestamp_millis()
    }

    fn schedule(toml: &str) -> Schedule {
        let c: ScheduleConfig = toml::from_str(toml).unwrap();
        c.check().unwrap()
    }

    #[test]
    fn quiet_hours_cross_midnight() {
        let s = schedule("timezone = \"Europe/Berlin\"\nquiet_hours = [\"22:00-07:00\"]");
        let tz = s.tz;
        assert!(!s.quiet(at(tz, 2026, 12, 1, 21, 59)));
        assert!(s.quiet(at(tz, 2026, 12, 1, 22, 0)));
        assert!(s.quiet(at(tz, 2026, 12, 2, 0, 30)));
        assert!(s.quiet(at(tz, 2026, 12, 2, 6, 59)));
        assert!(!s.quiet(at(tz, 2026, 12, 2, 7, 0)));
        assert_eq!(s.cap(1_000, at(tz, 2026, 12, 2, 3, 0)), 0);
        assert_eq!(s.cap(1_000, at(tz, 2026, 12, 2, 12, 0)), 1_000);
        // Berlin is UTC+1 in winter: 22:00 there is 21:00 UTC.
        let utc_21 = Tz::UTC
            .with_ymd_and_hms(2026, 12, 1, 21, 0, 0)
            .unwrap()
            .timestamp_millis();
        assert!(s.quiet(utc_21));
    }

    #[test]
    fn quiet_hours_keep_wall_clock_times_across_dst_changes() {
        // Europe/Berlin: 2026-03-29 02:00 → 03:00 (spring), 2026-10-25 03:00 → 02:00 (autumn).
        let s = schedule("timezone = \"Europe/Berlin\"\nquiet_hours = [\"01:00-06:00\"]");
        let utc = |y, mo, d, h, mi| {
            Tz::UTC
                .with_ymd_and_hms(y, mo, d, h, mi, 0)
                .unwrap()
                .timestamp_millis()
        };
        // Spring: quiet from 00:00 UTC (01:00 CET) to 04:00 UTC (06:00 CEST): four hours, not five.
        assert!(!s.quiet(utc(2026, 3, 28, 23, 59)));
        assert!(s.quiet(utc(2026, 3, 29, 0, 0)));
        assert!(s.quiet(utc(2026, 3, 29, 3, 59)));
        assert!(!s.quiet(utc(2026, 3, 29, 4, 0)));
        // Autumn: from 23:00 UTC (01:00 CEST) to 05:00 UTC (06:00 CET): six hours.
        assert!(!s.quiet(utc(2026, 10, 24, 22, 59)));
        assert!(s.quiet(utc(2026, 10, 24, 23, 0)));
        assert!(s.quiet(utc(2026, 10, 25, 4, 59)));
        assert!(!s.quiet(utc(2026, 10, 25, 5, 0)));
    }

    #[test]
    fn warm_up_days_change_at_local_midnight() {
        let s = schedule(
            "timezone = \"America/New_York\"\nwarmup_start = \"2026-12-01\"\nwarmup = [500, 1000, 2000]",
        );
        let tz = s.tz;
        // Before day 1, day 1's cap; each local midnight moves one day on; then the configured cap.
        assert_eq!(s.cap(6_000, at(tz, 2026, 11, 30, 12, 0)), 500);
        assert_eq!(s.cap(6_000, at(tz, 2026, 12, 1, 0, 0)), 500);
        assert_eq!(s.cap(6_000, at(tz, 2026, 12, 1, 23, 59)), 500);
        assert_eq!(s.cap(6_000, at(tz, 2026, 12, 2, 0, 0)), 1_000);
        assert_eq!(s.cap(6_000, at(tz, 2026, 12, 3, 0, 0)), 2_000);
        assert_eq!(s.cap(6_000, at(tz, 2026, 12, 4, 0, 0)), 6_000);
        // Never above the configured cap.
        assert_eq!(s.cap(800, at(tz, 2026, 12, 3, 9, 0)), 800);
        // 2026-12-02 00:00 in New York is 05:00 UTC, not 00:00 UTC.
        let utc_midnight = Tz::UTC
            .with_ymd_and_hms(2026, 12, 2, 0, 0, 0)
            .unwrap()
            .timestamp_millis();
        assert_eq!(s.cap(6_000, utc_midnight), 500);
    }

    #[test]
    fn warm_up_days_across_a_dst_change_are_calendar_days() {
        // New York springs forward on 2026-03-08: that day is 23 hours long, still one warm-up day.
        let s = schedule(
            "timezone = \"America/New_York\"\nwarmup_start = \"2026-03-07\"\nwarmup = [100, 200, 300]",
        );
        let tz = s.tz;
        assert_eq!(s.cap(6_000, at(tz, 2026, 3, 8, 23, 30)), 200);
        assert_eq!(s.cap(6_000, at(tz, 2026, 3, 9, 0, 0)), 300);
    }

    #[test]
    fn campaign_windows_with_days() {
        let w = SendWindow {
            hours: "20:00-02:00".into(),
            timezone: "Europe/London".into(),
            days: vec!["fri".into()],
        }
        .check()
        .unwrap();
        let tz = w.tz;
        // 2026-12-04 is a Friday: open Friday evening and into Saturday's small hours.
        assert!(!w.open(at(tz, 2026, 12, 4, 19, 59)));
        assert!(w.open(at(tz, 2026, 12, 4, 20, 0)));
        assert!(w.open(at(tz, 2026, 12, 5, 1, 59)));
        assert!(!w.open(at(tz, 2026, 12, 5, 2, 0)));
        assert!(!w.open(at(tz, 2026, 12, 5, 21, 0)), "Saturday evening");
        // The next Friday evening opens it again.
        assert!(!w.open(at(tz, 2026, 12, 11, 19, 59)));
        assert!(w.open(at(tz, 2026, 12, 11, 20, 0)));
    }

    #[test]
    fn bad_schedules_name_the_key() {
        for (toml, key, says) in [
            (
                "timezone = \"Mars/Olympus\"",
                "governor.schedule.timezone",
                "IANA",
            ),
            (
                "quiet_hours = [\"22:00\"]",
                "governor.schedule.quiet_hours",
                "HH:MM-HH:MM",
            ),
            (
                "quiet_hours = [\"25:00-07:00\"]",
                "governor.schedule.quiet_hours",
                "not a time",
            ),
            (
                "quiet_hours = [\"07:00-07:00\"]",
                "governor.schedule.quiet_hours",
                "empty",
            ),
            (
                "warmup = [1, 2]",
                "governor.schedule.warmup_start",
                "required",
            ),
            (
                "warmup_start = \"2026-12-01\"",
                "governor.schedule.warmup",
                "required",
            ),
            (
                "warmup_start = \"1 Dec\"\nwarmup = [5]",
                "governor.schedule.warmup_start",
                "YYYY-MM-DD",
            ),
            (
                "warmup_start = \"2026-12-01\"\nwarmup = [5, 0]",
                "governor.schedule.warmup",
                "day 2",
            ),
        ] {
            let c: ScheduleConfig = toml::from_str(toml).unwrap();
            let (k, e) = c.check().unwrap_err();
            assert_eq!(k, key, "{toml}");
            assert!(e.contains(says), "{toml}: {e}");
        }
        let bad_day = SendWindow {
            hours: "09:00-17:00".into(),
            timezone: "UTC".into(),
            days: vec!["funday".into()],
        };
        assert_eq!(bad_day.check().unwrap_err().0, "window.days");
    }
}
