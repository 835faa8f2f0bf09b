//! `/metrics` in the Prometheus text format. What happens in this process (reports, leases, renders)
//! is counted here as it happens; what the store knows for every conductor (the ledger, queue
//! depths) is read from it at scrape time, so several conductors expose the same totals.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use crate::store::StoreView;

/// Bucket upper bounds, in seconds, for request and render latencies.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    /// (provider, outcome) → reported sends.
    sends: BTreeMap<(String, &'static str), u64>,
    /// lease replies by kind: granted, idle, no_tokens.
    leases: BTreeMap<&'static str, u64>,
    /// Provider request latency by provider.
    requests: BTreeMap<String, Histogram>,
    renders: Histogram,
    /// Render claims in progress: when each batch was claimed.
    claimed: HashMap<(String, u32), Instant>,
    /// `GET /v1/campaigns/{id}` answered, and how many of those computed the view afresh.
    views_served: u64,
    views_computed: u64,
}

/// This process's counters.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn sent(&self, provider: &str, outcome: &'static str, latency_ms: Option<u32>) {
        let mut m = self.inner.lock().expect("metrics poisoned");
        *m.sends.entry((provider.to_string(), outcome)).or_default() += 1;
        if let Some(ms) = latency_ms {
            m.requests
                .entry(provider.to_string())
                .or_default()
                .observe(f64::from(ms) / 1000.0);
        }
    }

    pub fn lease(&self, kind: &'static str) {
        *self
            .inner
            .lock()
            .expect("metrics poisoned")
            .leases
            .entry(kind)
            .or_default() += 1;
    }

    pub fn campaign_view(&self, computed: bool) {
        let mut m = self.inner.lock().expect("metrics poisoned");
        m.views_served += 1;
        m.views_computed += u64::from(computed);
    }

    pub fn render_claimed(&self, campaign: &str, batch: u32) {
        let mut m = self.inner.lock().expect("metrics poisoned");
        // A renderer that died leaves its claim here; keep the map from growing without bound.
        if m.claimed.len() > 10_000 {
            m.claimed.clear();
        }
        m.claimed
            .insert((campaign.to_string(), batch), Instant::now());
    }

    pub fn render_done(&self, campaign: &str, batch: u32) {
        let mut m = self.inner.lock().expect("metrics poisoned");
        if let Some(t) = m.claimed.remove(&(campaign.to_string(), batch)) {
            m.renders.observe(t.elapsed().as_secs_f64());
        }
    }

    pub fn render(&self, store: &StoreView) -> String {
        let m = self.inner.lock().expect("metrics poisoned");
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "conductor_sends_total",
            "counter",
            "Provider requests reported, by provider and outcome.",
        );
        for ((provider, outcome), n) in &m.sends {
            let _ = writeln!(
                out,
                "conductor_sends_total{{provider=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(provider)
            );
        }
        head(
            &mut out,
            "conductor_leases_total",
            "counter",
            "Lease requests answered, by reply.",
        );
        for (kind, n) in &m.leases {
            let _ = writeln!(out, "conductor_leases_total{{reply=\"{kind}\"}} {n}");
        }
        head(
            &mut out,
            "conductor_provider_request_seconds",
            "histogram",
            "Provider request latency as the sender measured it.",
        );
        for (provider, h) in &m.requests {
            h.write(
                &mut out,
                "conductor_provider_request_seconds",
                &format!("provider=\"{}\"", label(provider)),
            );
        }
        head(
            &mut out,
            "conductor_render_batch_seconds",
            "histogram",
            "From a renderer's claim of a batch to its report.",
        );
        m.renders
            .write(&mut out, "conductor_render_batch_seconds", "");
        for (name, help, n) in [
            (
                "conductor_campaign_views_served_total",
                "Campaign views answered: GET /v1/campaigns/{id}, and the look that opens an event stream.",
                m.views_served,
            ),
            (
                "conductor_campaign_views_computed_total",
                "Of those, the ones that read the store; the rest were served a view under a second old.",
                m.views_computed,
            ),
        ] {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {n}");
        }
        head(
            &mut out,
            "conductor_ledger_tokens_granted_total",
            "counter",
            "Tokens granted from the minute ledger, by scope (all conductors).",
        );
        for (scope, granted, _) in &store.ledger {
            let _ = writeln!(
                out,
                "conductor_ledger_tokens_granted_total{{scope=\"{}\"}} {granted}",
                label(scope)
            );
        }
        head(
            &mut out,
            "conductor_ledger_tokens_forfeited_total",
            "counter",
            "Tokens granted but not spent before their minute ended, by scope.",
        );
        for (scope, _, forfeited) in &store.ledger {
            let _ = writeln!(
                out,
                "conductor_ledger_tokens_forfeited_total{{scope=\"{}\"}} {forfeited}",
                label(scope)
            );
        }
        head(
            &mut out,
            "conductor_queue_recipients",
            "gauge",
            "Recipients of running campaigns, by state.",
        );
        for (state, n) in &store.queue {
            let _ = writeln!(
                out,
                "conductor_queue_recipients{{state=\"{}\"}} {n}",
                label(state)
            );
        }
        head(
            &mut out,
            "conductor_campaigns",
            "gauge",
            "Campaigns by status.",
        );
        for (status, n) in &store.campaigns {
            let _ = writeln!(
                out,
                "conductor_campaigns{{status=\"{}\"}} {n}",
                label(status)
            );
        }
        head(
            &mut out,
            "conductor_engagement_events_total",
            "counter",
            "Opens and clicks of tracked campaigns (running, paused, or ended within a week), by kind and agent: a machine is a privacy prefetch or a link scanner.",
        );
        for (id, e) in &store.engagement {
            for (kind, f) in [("open", e.opens), ("click", e.clicks)] {
                for (agent, n) in [("human", f.total), ("machine", f.machine)] {
                    let _ = writeln!(
                        out,
                        "conductor_engagement_events_total{{campaign=\"{}\",kind=\"{kind}\",agent=\"{agent}\"}} {n}",
                        label(id)
                    );
                }
            }
        }
        head(
            &mut out,
            "conductor_engagement_recipients",
            "gauge",
            "Recipients of those campaigns who opened or clicked at least once (people only), by kind.",
        );
        for (id, e) in &store.engagement {
            for (kind, f) in [("open", e.opens), ("click", e.clicks)] {
                let _ = writeln!(
                    out,
                    "conductor_engagement_recipients{{campaign=\"{}\",kind=\"{kind}\"}} {}",
                    label(id),
                    f.unique
                );
            }
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_well_formed() {
        let m = Metrics::default();
        m.sent("mailgun", "sent", Some(120));
        m.sent("mailgun", "deferred", Some(30));
        m.sent("mail\"gun", "failed", None);
        m.lease("granted");
        let text = m.render(&StoreView {
            ledger: vec![("domain:gmail.com".into(), 10, 2)],
            queue: vec![("rendered".into(), 5)],
            campaigns: vec![("running".into(), 1)],
            engagement: vec![(
                "c1".into(),
                crate::domain::engagement::Engagement {
                    opens: crate::domain::engagement::Figures {
                        unique: 3,
                        total: 4,
                        machine: 9,
                    },
                    clicks: Default::default(),
                },
            )],
        });
        assert!(text.contains(
            "conductor_engagement_events_total{campaign=\"c1\",kind=\"open\",agent=\"machine\"} 9"
        ));
        assert!(text.contains("conductor_engagement_recipients{campaign=\"c1\",kind=\"open\"} 3"));
        assert!(text.contains("conductor_sends_total{provider=\"mailgun\",outcome=\"sent\"} 1"));
        assert!(text.contains("provider=\"mail\\\"gun\""), "{text}");
        assert!(text.contains(
            "conductor_provider_request_seconds_bucket{provider=\"mailgun\",le=\"0.25\"} 2"
        ));
        assert!(text.contains("conductor_provider_request_seconds_count{provider=\"mailgun\"} 2"));
        assert!(
            text.contains("conductor_ledger_tokens_forfeited_total{scope=\"domain:gmail.com\"} 2")
        );
        assert!(text.contains("conductor_render_batch_seconds_bucket{le=\"+Inf\"} 0"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
