//! Settings a sender needs wherever it runs — provider, pacing lanes. The file loader itself is
//! `renderer::deploy::config`, shared by every binary; it is re-exported here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use renderer::deploy::config::{check_http_url, invalid, ConfigError, Secret, SecretPath};

/// The provider keys `[provider]` holds, for the configs that embed it.
pub const PROVIDER_SECRETS: &[SecretPath] = &[
    &["provider", "mailgun", "api_key"],
    &["provider", "sendgrid", "api_key"],
    &["provider", "postmark", "server_token"],
    &["provider", "resend", "api_key"],
    &["provider", "ses", "secret_access_key"],
];

use crate::clock::Clock;
use crate::provider::{Mailgun, Outbox, Postmark, Provider, Resend, SendGrid, Ses};
use crate::worker::SenderConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Outbox,
    Mailgun,
    Sendgrid,
    Postmark,
    Resend,
    Ses,
}

impl ProviderKind {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Outbox => "outbox",
            ProviderKind::Mailgun => "mailgun",
            ProviderKind::Sendgrid => "sendgrid",
            ProviderKind::Postmark => "postmark",
            ProviderKind::Resend => "resend",
            ProviderKind::Ses => "ses",
        }
    }
}

/// `[provider]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Per-request timeout. A timeout after the request was sent makes the recipient `unknown`.
    pub timeout_ms: u64,
    /// The provider's own per-second limit, if any.
    pub per_second: Option<u32>,
    pub outbox: OutboxConfig,
    pub mailgun: MailgunConfig,
    pub sendgrid: ApiConfig,
    pub postmark: PostmarkConfig,
    pub resend: ApiConfig,
    pub ses: SesConfig,
}

/// `[provider.ses]`: Amazon SES v2. Credentials come from the AWS SDK's normal chain, unless an
/// SES-compatible service has keys of its own: `access_key_id` here and
/// `CONDUCTOR__PROVIDER__SES__SECRET_ACCESS_KEY` in the environment (never the file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SesConfig {
    /// Default: the SDK's (AWS_REGION, profile).
    pub region: Option<String>,
    /// An SES-compatible endpoint or a local emulator.
    pub endpoint: Option<String>,
    /// Needed for SES event publishing (bounces and complaints to SNS) and dedicated IP pools.
    pub configuration_set: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Outbox,
            timeout_ms: 15_000,
            per_second: None,
            outbox: OutboxConfig::default(),
            mailgun: MailgunConfig::default(),
            sendgrid: ApiConfig::default(),
            postmark: PostmarkConfig::default(),
            resend: ApiConfig::default(),
            ses: SesConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    pub dir: PathBuf,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            dir: "data/outbox".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailgunConfig {
    pub base_url: String,
    pub domain: String,
    /// Only from `CONDUCTOR__PROVIDER__MAILGUN__API_KEY`; a key written in the file is refused.
    pub api_key: Option<Secret>,
    /// A file holding the key (a mounted secret).
    pub api_key_file: Option<PathBuf>,
}

impl Default for MailgunConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.mailgun.net".into(),
            domain: String::new(),
            api_key: None,
            api_key_file: None,
        }
    }
}

impl MailgunConfig {
    pub fn key(&self) -> Result<String, ConfigError> {
        secret(
            &self.api_key,
            &self.api_key_file,
            "provider.mailgun.api_key",
        )
    }
}

/// A secret from the environment (`value`, set from `CONDUCTOR__…`) or from a file named in the
/// config; `key` is its config path, for messages.
fn secret(
    value: &Option<Secret>,
    file: &Option<PathBuf>,
    key: &str,
) -> Result<String, ConfigError> {
    if let Some(k) = value
        .as_ref()
        .map(Secret::expose)
        .filter(|k| !k.trim().is_empty())
    {
        return Ok(k.trim().to_string());
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                &format!("{key}_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        if !text.trim().is_empty() {
            return Ok(text.trim().to_string());
        }
    }
    let var = format!("CONDUCTOR__{}", key.replace('.', "__").to_ascii_uppercase());
    Err(invalid(key, format!("missing: set {var} or {key}_file")))
}

/// `[provider.sendgrid]`, `[provider.resend]`: an HTTP API with a bearer key.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Empty: the provider's own API host.
    pub base_url: String,
    /// Only from the environment (`CONDUCTOR__PROVIDER__SENDGRID__API_KEY`, `…__RESEND__API_KEY`).
    pub api_key: Option<Secret>,
    pub api_key_file: Option<PathBuf>,
}

impl ApiConfig {
    fn base(&self, default: &str) -> String {
        if self.base_url.trim().is_empty() {
            default.to_string()
        } else {
            self.base_url.trim().to_string()
        }
    }
}

/// `[provider.postmark]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostmarkConfig {
    pub base_url: String,
    /// Only from `CONDUCTOR__PROVIDER__POSTMARK__SERVER_TOKEN`.
    pub server_token: Option<Secret>,
    pub server_token_file: Option<PathBuf>,
    /// Marketing mail must go through a broadcast stream.
    pub message_stream: String,
    /// Messages per `/email/batch` request, 1–500; 1 sends each through `/email`. A batch holds the
    /// messages whose slots fall within a second, so it never sends one before its time.
    pub batch_size: usize,
}

impl Default for PostmarkConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.postmarkapp.com".into(),
            server_token: None,
            server_token_file: None,
            message_stream: "broadcast".into(),
            batch_size: crate::provider::postmark::MAX_BATCH,
        }
    }
}

const SENDGRID_API: &str = "https://api.sendgrid.com";
const RESEND_API: &str = "https://api.resend.com";

impl ProviderConfig {
    /// Everything a sender needs, its secret included.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_settings()?;
        self.key().map(|_| ())
    }

    /// The secret of the configured provider (none for the outbox).
    fn key(&self) -> Result<String, ConfigError> {
        match self.kind {
            // SES signs with credentials from the SDK's chain.
            ProviderKind::Outbox | ProviderKind::Ses => Ok(String::new()),
            ProviderKind::Mailgun => self.mailgun.key(),
            ProviderKind::Sendgrid => secret(
                &self.sendgrid.api_key,
                &self.sendgrid.api_key_file,
                "provider.sendgrid.api_key",
            ),
            ProviderKind::Postmark => secret(
                &self.postmark.server_token,
                &self.postmark.server_token_file,
                "provider.postmark.server_token",
            ),
            ProviderKind::Resend => secret(
                &self.resend.api_key,
                &self.resend.api_key_file,
                "provider.resend.api_key",
            ),
        }
    }

    /// The settings without the secret: what a process that does not send (a conductor whose
    /// senders run elsewhere) checks, so a bad value is caught wherever the file is read.
    pub fn validate_settings(&self) -> Result<(), ConfigError> {
        if !(100..=600_000).contains(&self.timeout_ms) {
            return Err(invalid(
                "provider.timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if self.per_second == Some(0) {
            return Err(invalid(
                "provider.per_second",
                "must be at least 1, or absent for no limit",
            ));
        }
        if self.kind == ProviderKind::Mailgun {
            let m = &self.mailgun;
            check_http_url("provider.mailgun.base_url", &m.base_url)?;
            if m.domain.trim().is_empty() {
                return Err(invalid(
                    "provider.mailgun.domain",
                    "is required when provider.kind = \"mailgun\"",
                ));
            }
        }
        match self.kind {
            ProviderKind::Sendgrid => check_http_url(
                "provider.sendgrid.base_url",
                &self.sendgrid.base(SENDGRID_API),
            )?,
            ProviderKind::Resend => {
                check_http_url("provider.resend.base_url", &self.resend.base(RESEND_API))?
            }
            ProviderKind::Postmark => {
                check_http_url("provider.postmark.base_url", &self.postmark.base_url)?;
                if self.postmark.message_stream.trim().is_empty() {
                    return Err(invalid(
                        "provider.postmark.message_stream",
                        "must name a message stream (a broadcast stream for marketing mail)",
                    ));
                }
                let max = crate::provider::postmark::MAX_BATCH;
                if !(1..=max).contains(&self.postmark.batch_size) {
                    return Err(invalid(
                        "provider.postmark.batch_size",
                        format!(
                            "{} is not 1–{max} (Postmark's /email/batch limit)",
                            self.postmark.batch_size
                        ),
                    ));
                }
            }
            ProviderKind::Ses => {
                renderer::deploy::aws::check_endpoint(
                    "provider.ses.endpoint",
                    self.ses.endpoint.as_deref(),
                )?;
                renderer::deploy::aws::check_keys(
                    "provider.ses",
                    &self.ses.access_key_id,
                    &self.ses.secret_access_key,
                )?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A one-line description for logs and summaries (never the key).
    pub fn describe(&self) -> String {
        match self.kind {
            ProviderKind::Outbox => format!("outbox ({})", self.outbox.dir.display()),
            ProviderKind::Mailgun => format!("Mailgun at {}", self.mailgun.base_url),
            ProviderKind::Sendgrid => format!("SendGrid at {}", self.sendgrid.base(SENDGRID_API)),
            ProviderKind::Postmark => format!(
                "Postmark at {} (stream {})",
                self.postmark.base_url, self.postmark.message_stream
            ),
            ProviderKind::Resend => format!("Resend at {}", self.resend.base(RESEND_API)),
            ProviderKind::Ses => format!(
                "Amazon SES{}{}",
                self.ses
                    .region
                    .as_deref()
                    .map_or(String::new(), |r| format!(" in {r}")),
                self.ses
                    .endpoint
                    .as_deref()
                    .map_or(String::new(), |e| format!(" at {e}"))
            ),
        }
    }

    pub fn build(&self, clock: Arc<dyn Clock>) -> Result<Arc<dyn Provider>, ConfigError> {
        let timeout = Duration::from_millis(self.timeout_ms);
        Ok(match self.kind {
            ProviderKind::Outbox => Arc::new(Outbox::new(self.outbox.dir.clone(), clock)),
            ProviderKind::Mailgun => {
                let m = &self.mailgun;
                Arc::new(
                    Mailgun::new(
                        &m.base_url,
                        &m.domain,
                        m.key()?,
                        Duration::from_millis(self.timeout_ms),
                        clock,
                    )
                    .map_err(|e| invalid("provider.mailgun", e.to_string()))?,
                )
            }
            ProviderKind::Sendgrid => Arc::new(
                SendGrid::new(
                    &self.sendgrid.base(SENDGRID_API),
                    self.key()?,
                    timeout,
                    clock,
                )
                .map_err(|e| invalid("provider.sendgrid", e.to_string()))?,
            ),
            ProviderKind::Postmark => Arc::new(
                Postmark::new(
                    &self.postmark.base_url,
                    self.key()?,
                    &self.postmark.message_stream,
                    self.postmark.batch_size,
                    timeout,
                    clock,
                )
                .map_err(|e| invalid("provider.postmark", e.to_string()))?,
            ),
            ProviderKind::Resend => Arc::new(
                Resend::new(&self.resend.base(RESEND_API), self.key()?, timeout, clock)
                    .map_err(|e| invalid("provider.resend", e.to_string()))?,
            ),
            ProviderKind::Ses => Arc::new(Ses::new(self.ses.clone(), timeout)),
        })
    }
}

/// `[sender]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderSettings {
    /// Recipients a lane asks for per lease to begin with, and never fewer.
    pub lease_size: u32,
    /// The most a lane asks for when leases are spent fast (uncapped, or a high cap); below
    /// `lease_size`, the ask never grows.
    pub max_lease_size: u32,
    /// Requests in flight at once, per lane.
    pub concurrency: u32,
    /// Leases worked at once.
    pub lanes: u32,
}

impl Default for SenderSettings {
    fn default() -> Self {
        Self {
            lease_size: 200,
            max_lease_size: 1_000,
            concurrency: 32,
            lanes: 2,
        }
    }
}

impl SenderSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_size == 0 || self.concurrency == 0 || self.lanes == 0 {
            return Err(invalid(
                "sender",
                "lease_size, concurrency and lanes must each be at least 1",
            ));
        }
        Ok(())
    }

    pub fn sender_config(&self, provider: &ProviderConfig) -> SenderConfig {
        SenderConfig {
            lease_size: self.lease_size as usize,
            max_lease_size: self.max_lease_size as usize,
            concurrency: self.concurrency as usize,
            lanes: self.lanes as usize,
            per_second: provider.per_second.and_then(std::num::NonZeroU32::new),
            ..SenderConfig::default()
        }
    }
}
