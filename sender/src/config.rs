//! Settings a sender needs wherever it runs — provider, pacing lanes. The file loader itself is
//! `renderer::config`, shared by every binary; it is re-exported here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use renderer::config::{from_toml, invalid, load, ConfigError, ENV_PREFIX};

use crate::clock::Clock;
use crate::provider::{Mailgun, Outbox, Provider};
use crate::worker::SenderConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Outbox,
    Mailgun,
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
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Outbox,
            timeout_ms: 15_000,
            per_second: None,
            outbox: OutboxConfig::default(),
            mailgun: MailgunConfig::default(),
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

#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailgunConfig {
    pub base_url: String,
    pub domain: String,
    /// Only from `CONDUCTOR__PROVIDER__MAILGUN__API_KEY`; a key written in the file is refused.
    pub api_key: Option<String>,
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

impl std::fmt::Debug for MailgunConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailgunConfig")
            .field("base_url", &self.base_url)
            .field("domain", &self.domain)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_file", &self.api_key_file)
            .finish()
    }
}

impl MailgunConfig {
    pub fn key(&self) -> Result<String, ConfigError> {
        if let Some(k) = self.api_key.as_ref().filter(|k| !k.trim().is_empty()) {
            return Ok(k.trim().to_string());
        }
        if let Some(path) = &self.api_key_file {
            let key = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "provider.mailgun.api_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if !key.trim().is_empty() {
                return Ok(key.trim().to_string());
            }
        }
        Err(invalid(
            "provider.mailgun.api_key",
            "missing: set CONDUCTOR__PROVIDER__MAILGUN__API_KEY or provider.mailgun.api_key_file",
        ))
    }
}

impl ProviderConfig {
    /// Everything a sender needs, its secret included.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_settings()?;
        if self.kind == ProviderKind::Mailgun {
            self.mailgun.key()?;
        }
        Ok(())
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
            if !(m.base_url.starts_with("https://") || m.base_url.starts_with("http://")) {
                return Err(invalid(
                    "provider.mailgun.base_url",
                    "must be an http(s) URL",
                ));
            }
            if m.domain.trim().is_empty() {
                return Err(invalid(
                    "provider.mailgun.domain",
                    "is required when provider.kind = \"mailgun\"",
                ));
            }
        }
        Ok(())
    }

    /// A one-line description for logs and summaries (never the key).
    pub fn describe(&self) -> String {
        match self.kind {
            ProviderKind::Outbox => format!("outbox ({})", self.outbox.dir.display()),
            ProviderKind::Mailgun => format!("Mailgun at {}", self.mailgun.base_url),
        }
    }

    pub fn build(&self, clock: Arc<dyn Clock>) -> Result<Arc<dyn Provider>, ConfigError> {
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
        })
    }
}

/// `[sender]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderSettings {
    /// Recipients asked for per lease.
    pub lease_size: u32,
    /// Requests in flight at once, per lane.
    pub concurrency: u32,
    /// Leases worked at once.
    pub lanes: u32,
}

impl Default for SenderSettings {
    fn default() -> Self {
        Self {
            lease_size: 200,
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
            concurrency: self.concurrency as usize,
            lanes: self.lanes as usize,
            per_second: provider.per_second.and_then(std::num::NonZeroU32::new),
            ..SenderConfig::default()
        }
    }
}
