//! `conductor.toml` plus `CONDUCTOR__SECTION__KEY` environment overrides, validated at load.
//!
//! Every key is optional: with no file at all the conductor runs embedded (SQLite, a local body folder,
//! the outbox provider). `[provider]` and `[sender]` belong to the sender crate, which reads the same
//! file in the `sender` binary. Secrets come only from the environment or a file named in the config,
//! never from the config itself, and are never printed.

pub mod watch;

use renderer::deploy::config::Secret;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use renderer::deploy::config::invalid;
pub use renderer::deploy::config::ConfigError;
pub use sender::config::{
    MailgunConfig, OutboxConfig, ProviderConfig, ProviderKind, SenderSettings,
};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub store: Store,
    pub bodies: renderer::body_store::BodiesConfig,
    pub campaigns: Campaigns,
    pub governor: Governor,
    pub provider: ProviderConfig,
    pub sender: SenderSettings,
    pub workers: Workers,
    pub dispatch: renderer::deploy::aws::DispatchConfig,
    pub events: Events,
    pub safety: sender::safety::Safety,
    pub feedback: crate::domain::feedback::FeedbackConfig,
    pub unsubscribe: crate::domain::unsubscribe::UnsubscribeConfig,
    /// Read by `renderer` processes; the conductor only checks that it parses.
    pub renderer: renderer::service::RendererSettings,
    pub log: renderer::deploy::process::LogConfig,
}

/// `[events]`: where campaign lifecycle events go (see `events.rs` for their schema).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Events {
    /// An SNS topic; without one, events are only logged.
    pub sns: Option<renderer::deploy::aws::SnsTopic>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    pub listen: String,
    /// Largest campaign request with an inline JSON list, in bytes (it is read whole).
    pub max_body_bytes: usize,
    /// Largest recipient list upload (a CSV or NDJSON part or body), in bytes: it is read as it
    /// arrives and never held whole.
    pub max_upload_bytes: u64,
    /// `sha256:HEX` digests of the API's bearer tokens; when any are set, every `/v1` route and the
    /// event streams need one. Read at each request, so edits apply at once.
    pub api_tokens: Vec<String>,
    /// Host names (the `Host` header, without port) this server answers to; anything else is refused,
    /// which defeats DNS rebinding. The listen address, when it is an IP, is always allowed. `"*"`
    /// allows any (only behind a proxy that checks it).
    pub allowed_hosts: Vec<String>,
    /// Listening on a non-loopback address without `api_tokens` leaves every route open to the
    /// network; the conductor refuses to start that way unless this says it is meant.
    pub allow_open_api: bool,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024 * 1024,
            max_upload_bytes: 8 * 1024 * 1024 * 1024,
            api_tokens: Vec::new(),
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allow_open_api: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Store {
    pub url: String,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            url: "sqlite://data/conductor.db".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Campaigns {
    pub batch_size: u32,
    pub templates_dir: PathBuf,
    /// Provider requests per recipient before a deferred recipient is given up as failed.
    pub max_attempts: u32,
    /// What happens to a send that may or may not have reached the provider (no answer, a sender
    /// that died mid-request): `hold` it as `unknown` for an operator to retry, or `resend` it and
    /// accept that some recipients may get the message twice.
    pub on_ambiguous: OnAmbiguous,
    /// Largest message (subject, HTML and text) a recipient's render may produce; a recipient over it
    /// fails with the reason, and at creation the campaign is refused naming the first such row.
    pub max_message_bytes: usize,
    /// Time one recipient's render may take.
    pub max_render_ms: u64,
    /// Recipients per campaign rendered ahead of sending (at least two minutes at the global cap):
    /// rendering follows the send cursor, so a large campaign's bodies are not all made, and stored,
    /// before its first minute.
    pub render_ahead: u32,
}

impl Campaigns {
    /// The render-ahead window in force: `render_ahead`, or two minutes at the global cap if more.
    pub fn render_ahead(&self, governor: &Governor) -> u32 {
        self.render_ahead.max(governor.per_minute.saturating_mul(2))
    }

    pub fn render_limits(&self) -> renderer::RenderLimits {
        renderer::RenderLimits {
            max_message_bytes: self.max_message_bytes,
            max_render_ms: self.max_render_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAmbiguous {
    #[default]
    Hold,
    Resend,
}

impl Default for Campaigns {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            templates_dir: "templates".into(),
            max_attempts: 8,
            on_ambiguous: OnAmbiguous::Hold,
            max_message_bytes: renderer::RenderLimits::default().max_message_bytes,
            max_render_ms: renderer::RenderLimits::default().max_render_ms,
            render_ahead: 12_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Governor {
    /// Messages per calendar minute, all senders together.
    pub per_minute: u32,
    /// No send is started this close to the end of a minute, so that it lands inside it.
    pub safety_margin_ms: u32,
    /// Backing off below the cap when the provider throttles.
    pub throttle: crate::domain::throttle::ThrottleConfig,
    /// Per-recipient-domain caps (`"gmail.com" = 2000`): messages per minute to that domain, all
    /// campaigns together.
    pub domains: std::collections::BTreeMap<String, u32>,
    /// Warm-up ramps and quiet hours.
    pub schedule: crate::domain::schedule::ScheduleConfig,
}

impl Default for Governor {
    fn default() -> Self {
        Self {
            per_minute: 6000,
            safety_margin_ms: 2000,
            throttle: Default::default(),
            domains: Default::default(),
            schedule: Default::default(),
        }
    }
}

impl Governor {
    /// The schedule, checked at load (so this cannot fail on a loaded config).
    pub fn schedule(&self) -> crate::domain::schedule::Schedule {
        self.schedule.check().unwrap_or_default()
    }

    /// The global cap of the minute `at` is in, before throttling: the configured cap, lowered by the
    /// warm-up, 0 in quiet hours.
    pub fn cap_at(&self, at: sender::Millis) -> u32 {
        self.schedule().cap(self.per_minute, at)
    }

    /// The cap of `email`'s domain, if it has one.
    pub fn domain_of<'a>(&'a self, email: &str) -> Option<(&'a str, u32)> {
        let domain = email.rsplit_once('@')?.1;
        self.domains
            .iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(domain))
            .map(|(d, c)| (d.as_str(), *c))
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.per_minute == 0 {
            return Err(invalid(
                "governor.per_minute",
                "must be at least 1 (pause a campaign to stop sending)",
            ));
        }
        if self.safety_margin_ms >= 30_000 {
            return Err(invalid(
                "governor.safety_margin_ms",
                "must be under 30000 (half a minute)",
            ));
        }
        for (domain, cap) in &self.domains {
            let ok = !domain.is_empty()
                && domain.contains('.')
                && domain
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
            if !ok {
                return Err(invalid(
                    "governor.domains",
                    format!("{domain:?} is not a lower-case domain name like \"gmail.com\""),
                ));
            }
            if *cap == 0 {
                return Err(invalid(
                    "governor.domains",
                    format!("{domain:?} has cap 0: remove the recipients instead"),
                ));
            }
        }
        self.schedule
            .check()
            .map(|_| ())
            .map_err(|(key, e)| invalid(key, e))
    }
}

/// `[workers]`: remote renderer and sender processes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workers {
    /// Run the sender in this process (the embedded default). Turn off when `sender` processes do it.
    pub embedded_sender: bool,
    /// The secret remote workers present as a bearer token; only from `CONDUCTOR__WORKERS__SECRET`.
    /// Without it the worker API is closed.
    pub secret: Option<Secret>,
    /// How long past its spend-by moment plus the provider timeout a lease may stay unreported before
    /// its recipients are marked `unknown` (the sender is presumed dead).
    pub lease_grace_ms: u32,
}

impl Default for Workers {
    fn default() -> Self {
        Self {
            embedded_sender: true,
            secret: None,
            lease_grace_ms: 10_000,
        }
    }
}

impl renderer::deploy::config::Secrets for Config {
    fn secrets() -> Vec<renderer::deploy::config::SecretPath> {
        let mut s = sender::config::PROVIDER_SECRETS.to_vec();
        s.extend([
            renderer::deploy::config::WORKERS_SECRET,
            renderer::deploy::aws::BODIES_S3_SECRET,
            renderer::deploy::aws::DISPATCH_SNS_SECRET,
            &["events", "sns", "secret_access_key"],
            &["feedback", "mailgun", "signing_key"],
            &["feedback", "postmark", "password"],
            &["unsubscribe", "secret"],
        ]);
        s
    }
}

impl Config {
    /// Reads `path` (if given), applies environment overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config: Config = renderer::deploy::config::load(path, env)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config: Config = renderer::deploy::config::from_toml(text, env)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.log.validate()?;
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if self.server.max_upload_bytes < 1024 {
            return Err(invalid("server.max_upload_bytes", "must be at least 1024"));
        }
        for t in &self.server.api_tokens {
            check_entry(t).map_err(|e| invalid("server.api_tokens", e))?;
        }
        let ip = self.listen_addr()?.ip();
        if !ip.is_loopback() && self.server.api_tokens.is_empty() && !self.server.allow_open_api {
            return Err(invalid(
                "server.api_tokens",
                format!("listening on {ip} (not loopback) with no API tokens would let anyone on the network create campaigns: list token digests (`conductor token new`), or set [server] allow_open_api = true if that is meant"),
            ));
        }
        if let Some(h) = self.server.allowed_hosts.iter().find(|h| !is_host(h)) {
            return Err(invalid(
                "server.allowed_hosts",
                format!("{h:?} is not a host name or IP address (no scheme, port or path)"),
            ));
        }
        self.store_url()?;
        self.bodies.location()?;
        self.safety.check()?;
        self.feedback.check()?;
        self.unsubscribe.check()?;
        self.governor.throttle.check()?;
        self.dispatch.check()?;
        if let Some(topic) = &self.events.sns {
            topic.check("events.sns")?;
        }
        if self.dispatch.mode == renderer::deploy::aws::DispatchMode::Sns
            && self.workers.secret.is_none()
        {
            return Err(invalid(
                "workers.secret",
                "renderer processes report through the worker API: set CONDUCTOR__WORKERS__SECRET",
            ));
        }
        if !(1..=100_000).contains(&self.campaigns.batch_size) {
            return Err(invalid(
                "campaigns.batch_size",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=100).contains(&self.campaigns.max_attempts) {
            return Err(invalid(
                "campaigns.max_attempts",
                "must be between 1 and 100",
            ));
        }
        if !(16 * 1024..=40 * 1024 * 1024).contains(&self.campaigns.max_message_bytes) {
            return Err(invalid(
                "campaigns.max_message_bytes",
                "must be between 16384 and 41943040 (40 MiB, the largest any provider accepts)",
            ));
        }
        if !(10..=60_000).contains(&self.campaigns.max_render_ms) {
            return Err(invalid(
                "campaigns.max_render_ms",
                "must be between 10 and 60000",
            ));
        }
        if self.campaigns.render_ahead == 0 {
            return Err(invalid("campaigns.render_ahead", "must be at least 1"));
        }
        self.governor.check()?;
        if self.workers.embedded_sender {
            self.provider.validate()?;
        } else {
            // The senders hold the provider's key; this process never uses it.
            self.provider.validate_settings()?;
        }
        self.sender.validate()?;
        if self
            .workers
            .secret
            .as_ref()
            .map(Secret::expose)
            .is_some_and(|s| s.trim().len() < 16)
        {
            return Err(invalid("workers.secret", "must be at least 16 characters"));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|e| {
            invalid(
                "server.listen",
                format!("{:?} is not host:port: {e}", self.server.listen),
            )
        })
    }

    /// `sqlite://PATH` or `postgres://USER@HOST/DATABASE`.
    pub fn store_url(&self) -> Result<String, ConfigError> {
        let url = self.store.url.trim();
        let ok = url.strip_prefix("sqlite://").is_some_and(|p| !p.is_empty())
            || ["postgres://", "postgresql://"]
                .iter()
                .any(|p| url.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
        if ok {
            Ok(url.to_string())
        } else {
            // Never the URL itself: it may carry a password.
            Err(invalid(
                "store.url",
                "is neither sqlite://PATH nor postgres://USER@HOST/DATABASE",
            ))
        }
    }
}

/// A host name, an IPv4 address, `"*"`, or an IPv6 address bare or in brackets; no scheme, port or path.
fn is_host(h: &str) -> bool {
    let h = h.trim();
    let bare_ipv6 = h.parse::<std::net::Ipv6Addr>().is_ok();
    let bracketed = h
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    !h.is_empty() && (bare_ipv6 || bracketed || !h.contains(['/', ' ', '@', ':']))
}

/// Checks one `[server] api_tokens` entry; the message says what a good one looks like.
pub fn check_entry(entry: &str) -> Result<(), String> {
    let hex = entry
        .strip_prefix("sha256:")
        .ok_or_else(|| "must be \"sha256:\" and the hex SHA-256 of the token (`conductor token new` prints one); the token itself never goes in the config".to_string())?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        // Never echoed: a token pasted here by mistake would end up in logs and the audit.
        return Err("a digest must be 64 hex digits after \"sha256:\"".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_file_means_embedded_defaults() {
        let c = Config::from_toml("", env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.governor.per_minute, 6000);
        assert_eq!(c.store_url().unwrap(), "sqlite://data/conductor.db");
    }

    #[test]
    fn the_shipped_example_configs_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra");
        let example = Config::load(Some(&root.join("conductor.example.toml")), env(&[])).unwrap();
        let mut defaults = Config::default();
        defaults.provider.mailgun.domain = "mg.example.com".into(); // the one example value
        assert_eq!(example, defaults, "the example lists the defaults");
        let distributed = Config::load(
            Some(&root.join("distributed.toml")),
            env(&[("CONDUCTOR__WORKERS__SECRET", "0123456789abcdef0123")]),
        )
        .unwrap();
        assert_eq!(
            distributed.dispatch.mode,
            renderer::deploy::aws::DispatchMode::Sns
        );
        assert!(distributed.events.sns.is_some());
        assert_eq!(
            distributed.provider.mailgun.api_key, None,
            "a conductor whose senders run elsewhere needs no provider key"
        );
        // SNS dispatch needs the secret its renderers report with.
        let err = Config::load(Some(&root.join("distributed.toml")), env(&[])).unwrap_err();
        assert!(err.to_string().contains("workers.secret"), "{err}");
    }

    #[test]
    fn sns_and_s3_settings_are_checked_at_load() {
        for (toml, key) in [
            ("[bodies]\nurl = \"s3://UPPER\"", "bodies.url"),
            (
                "[bodies.s3]\nendpoint = \"ftp://x\"\n[bodies]\nurl = \"s3://bucket\"",
                "bodies.s3.endpoint",
            ),
            ("[dispatch]\nmode = \"sns\"", "dispatch.sns.topic_arn"),
            (
                "[dispatch]\nredispatch_after_ms = 10",
                "dispatch.redispatch_after_ms",
            ),
            (
                "[events.sns]\ntopic_arn = \"topic\"",
                "events.sns.topic_arn",
            ),
        ] {
            let err = Config::from_toml(toml, env(&[])).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        let err = Config::from_toml("[dispatch]\nmode = \"carrier-pigeon\"", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dispatch.mode"), "{err}");
    }

    #[test]
    fn env_overrides_the_file() {
        let c = Config::from_toml(
            "[governor]\nper_minute = 100\n[provider]\nkind = \"mailgun\"\n[provider.mailgun]\ndomain = \"mg.example.com\"\n",
            env(&[
                ("CONDUCTOR__GOVERNOR__PER_MINUTE", "250"),
                ("CONDUCTOR__PROVIDER__MAILGUN__API_KEY", "key-secret"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.governor.per_minute, 250);
        assert_eq!(c.provider.mailgun.key().unwrap(), "key-secret");
        assert!(
            !format!("{c:?}").contains("key-secret"),
            "secrets never printed"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[governor]\nper_minute = 0", "governor.per_minute"),
            ("[server]\napi_tokens = [\"my-plain-token\"]", "server.api_tokens"),
            ("[governor.domains]\n\"Gmail.com\" = 5", "governor.domains"),
            ("[governor.domains]\n\"gmail.com\" = 0", "governor.domains"),
            ("[governor.schedule]\nquiet_hours = [\"22-7\"]", "governor.schedule.quiet_hours"),
            ("[governor]\nper_minute = \"lots\"", "per_minute"),
            ("[campaigns]\nbatch_size = 0", "campaigns.batch_size"),
            ("[server]\nlisten = \"nowhere\"", "server.listen"),
            ("[server]\nallowed_hosts = [\"http://x.example\"]", "server.allowed_hosts"),
            ("[server]\nallowed_hosts = [\"x.example:8080\"]", "server.allowed_hosts"),
            ("[store]\nurl = \"mysql://x\"", "store.url"),
            ("[governor]\nper_minit = 5", "per_minit"),
            ("[provider]\nkind = \"pigeon\"", "pigeon"),
            (
                "[provider]\nkind = \"mailgun\"\n[provider.mailgun]\ndomain = \"d.example\"",
                "provider.mailgun.api_key",
            ),
            (
                "[provider.mailgun]\napi_key = \"in-the-file\"",
                "provider.mailgun.api_key",
            ),
            ("[governor\nper_minute = 5", "line 1"),
            (
                "[provider]\nkind = \"sendgrid\"",
                "CONDUCTOR__PROVIDER__SENDGRID__API_KEY",
            ),
            (
                "[provider]\nkind = \"postmark\"",
                "provider.postmark.server_token",
            ),
            (
                "[provider]\nkind = \"resend\"\n[provider.resend]\napi_key_file = \"/nonexistent/key\"",
                "provider.resend.api_key_file",
            ),
            (
                "[provider.postmark]\nserver_token = \"in-the-file\"",
                "provider.postmark.server_token",
            ),
            (
                "[feedback.postmark]\nusername = \"pm\"\npassword = \"in-the-file\"",
                "CONDUCTOR__FEEDBACK__POSTMARK__PASSWORD",
            ),
            (
                "[unsubscribe]\nsecret = \"in-the-file\"",
                "CONDUCTOR__UNSUBSCRIBE__SECRET",
            ),
            (
                "[workers]\nsecret = \"in-the-file\"",
                "CONDUCTOR__WORKERS__SECRET",
            ),
            (
                "[provider]\nkind = \"postmark\"\n[provider.postmark]\nmessage_stream = \" \"",
                "provider.postmark.message_stream",
            ),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text, env(&[])).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err:?}");
            assert!(!err.contains("in-the-file"));
        }
        let err =
            Config::from_toml("", env(&[("CONDUCTOR__GOVERNOR__PER_MINUTE", "-5")])).unwrap_err();
        assert!(err.to_string().contains("per_minute"), "{err}");
        let err = Config::from_toml(
            "",
            env(&[("CONDUCTOR__FEEDBACK__MAILGUN__SIGNING_KEY", " ")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("feedback.mailgun.signing_key"),
            "{err}"
        );
    }
}
