//! Settings a sender needs wherever it runs — provider, pacing lanes — and the loader for a TOML file
//! with `CONDUCTOR__SECTION__KEY` environment overrides, shared by the conductor and the `sender`
//! binary so that one config file and one set of variables describe a whole deployment.
//!
//! Secrets come only from the environment or from a file named in the config, never from the config
//! itself, and are never printed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::clock::Clock;
use crate::provider::{Mailgun, Outbox, Provider};
use crate::worker::SenderConfig;

pub const ENV_PREFIX: &str = "CONDUCTOR__";

/// Keys that hold secrets: accepted from the environment only.
const SECRETS: &[&[&str]] = &[&["provider", "mailgun", "api_key"], &["workers", "secret"]];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

pub fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Reads `path` (none: every key takes its default), applies the environment overrides among `env`,
/// and deserialises the result. Keys a program does not know are refused inside the sections it
/// reads; sections it does not read are its neighbours' business.
pub fn load<T: DeserializeOwned>(
    path: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
            path: p.display().to_string(),
            reason: e.to_string(),
        })?,
        None => String::new(),
    };
    from_toml(&text, env)
}

pub fn from_toml<T: DeserializeOwned>(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    for secret in SECRETS {
        let mut node = Some(&table);
        let mut value = None;
        for (i, part) in secret.iter().enumerate() {
            let v = node.and_then(|t| t.get(*part));
            if i + 1 == secret.len() {
                value = v;
            } else {
                node = v.and_then(|v| v.as_table());
            }
        }
        if value.is_some() {
            let key = secret.join(".");
            let var = format!("{ENV_PREFIX}{}", secret.join("__").to_ascii_uppercase());
            return Err(invalid(
                &key,
                format!("secrets are not read from the config file: set {var}"),
            ));
        }
    }
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    overrides.sort();
    let applied: Vec<String> = overrides.iter().map(|(k, _)| k.clone()).collect();
    for (key, value) in overrides {
        let path: Vec<String> = key[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        set_path(&mut table, &path, &value)
            .map_err(|reason| invalid(&path.join("."), format!("from {key}: {reason}")))?;
    }
    // Through text once more so that type errors quote the offending key and value.
    let merged = toml::to_string(&table).map_err(|e| ConfigError::Parse(e.to_string()))?;
    toml::from_str(&merged).map_err(|e| {
        let source = if applied.is_empty() {
            String::new()
        } else {
            // The quoted line is of the file merged with these, not of the file alone.
            format!("\n(with environment overrides {})", applied.join(", "))
        };
        ConfigError::Parse(format!("{e}{source}"))
    })
}

/// Sets `path` in `table` to `value`, read as a TOML value when it is one (numbers, booleans) and as a
/// string otherwise.
fn set_path(table: &mut toml::Table, path: &[String], value: &str) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut t = table;
    for p in parents {
        t = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    t.insert(last.clone(), parsed);
    Ok(())
}

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
    pub fn validate(&self) -> Result<(), ConfigError> {
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
            m.key()?;
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
