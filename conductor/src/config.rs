//! `conductor.toml` plus `CONDUCTOR__SECTION__KEY` environment overrides, validated at load.
//!
//! Every key is optional: with no file at all the conductor runs embedded (SQLite, a local body folder,
//! the outbox provider). Secrets come only from the environment or a file named in the config, never
//! from the config itself, and are never printed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub store: Store,
    pub bodies: Bodies,
    pub campaigns: Campaigns,
    pub governor: Governor,
    pub provider: Provider,
    pub sender: SenderSection,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    pub listen: String,
    /// Largest request body accepted (a campaign with its recipient list), in bytes.
    pub max_body_bytes: usize,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024 * 1024,
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
pub struct Bodies {
    pub url: String,
}

impl Default for Bodies {
    fn default() -> Self {
        Self {
            url: "file://data/bodies".into(),
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
}

impl Default for Campaigns {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            templates_dir: "templates".into(),
            max_attempts: 8,
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
}

impl Default for Governor {
    fn default() -> Self {
        Self {
            per_minute: 6000,
            safety_margin_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Outbox,
    Mailgun,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Provider {
    pub kind: ProviderKind,
    /// Per-request timeout. A timeout after the request was sent makes the recipient `unknown`.
    pub timeout_ms: u64,
    /// The provider's own per-second limit, if any.
    pub per_second: Option<u32>,
    pub outbox: Outbox,
    pub mailgun: Mailgun,
}

impl Default for Provider {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Outbox,
            timeout_ms: 15_000,
            per_second: None,
            outbox: Outbox::default(),
            mailgun: Mailgun::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Outbox {
    pub dir: PathBuf,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            dir: "data/outbox".into(),
        }
    }
}

#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mailgun {
    pub base_url: String,
    pub domain: String,
    /// Only from `CONDUCTOR__PROVIDER__MAILGUN__API_KEY`; a key written in the file is refused.
    pub api_key: Option<String>,
    /// A file holding the key (a mounted secret).
    pub api_key_file: Option<PathBuf>,
}

impl Default for Mailgun {
    fn default() -> Self {
        Self {
            base_url: "https://api.mailgun.net".into(),
            domain: String::new(),
            api_key: None,
            api_key_file: None,
        }
    }
}

impl std::fmt::Debug for Mailgun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailgun")
            .field("base_url", &self.base_url)
            .field("domain", &self.domain)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_file", &self.api_key_file)
            .finish()
    }
}

impl Mailgun {
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderSection {
    pub lease_size: u32,
    pub concurrency: u32,
    pub lanes: u32,
}

impl Default for SenderSection {
    fn default() -> Self {
        Self {
            lease_size: 200,
            concurrency: 32,
            lanes: 2,
        }
    }
}

const ENV_PREFIX: &str = "CONDUCTOR__";

impl Config {
    /// Reads `path` (if given), applies environment overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?,
            None => String::new(),
        };
        Self::from_toml(&text, env)
    }

    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if table
            .get("provider")
            .and_then(|p| p.get("mailgun"))
            .and_then(|m| m.get("api_key"))
            .is_some()
        {
            return Err(invalid(
                "provider.mailgun.api_key",
                "secrets are not read from the config file: use CONDUCTOR__PROVIDER__MAILGUN__API_KEY or api_key_file",
            ));
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
        let config: Config = toml::from_str(&merged).map_err(|e| {
            let source = if applied.is_empty() {
                String::new()
            } else {
                // The quoted line is of the file merged with these, not of the file alone.
                format!("\n(with environment overrides {})", applied.join(", "))
            };
            ConfigError::Parse(format!("{e}{source}"))
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        self.store_url()?;
        self.bodies_dir()?;
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
        if self.governor.per_minute == 0 {
            return Err(invalid(
                "governor.per_minute",
                "must be at least 1 (pause a campaign to stop sending)",
            ));
        }
        if self.governor.safety_margin_ms >= 30_000 {
            return Err(invalid(
                "governor.safety_margin_ms",
                "must be under 30000 (half a minute)",
            ));
        }
        if !(100..=600_000).contains(&self.provider.timeout_ms) {
            return Err(invalid(
                "provider.timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if self.provider.per_second == Some(0) {
            return Err(invalid(
                "provider.per_second",
                "must be at least 1, or absent for no limit",
            ));
        }
        if self.sender.lease_size == 0 || self.sender.concurrency == 0 || self.sender.lanes == 0 {
            return Err(invalid(
                "sender",
                "lease_size, concurrency and lanes must each be at least 1",
            ));
        }
        if self.provider.kind == ProviderKind::Mailgun {
            let m = &self.provider.mailgun;
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
            Err(invalid(
                "store.url",
                format!("{url:?} is neither sqlite://PATH nor postgres://USER@HOST/DATABASE"),
            ))
        }
    }

    pub fn bodies_dir(&self) -> Result<PathBuf, ConfigError> {
        match self.bodies.url.strip_prefix("file://") {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(invalid(
                "bodies.url",
                format!("{:?} is not file://PATH", self.bodies.url),
            )),
        }
    }
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
            ("[governor]\nper_minute = \"lots\"", "per_minute"),
            ("[campaigns]\nbatch_size = 0", "campaigns.batch_size"),
            ("[server]\nlisten = \"nowhere\"", "server.listen"),
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
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text, env(&[])).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err:?}");
            assert!(!err.contains("in-the-file"));
        }
        let err =
            Config::from_toml("", env(&[("CONDUCTOR__GOVERNOR__PER_MINUTE", "-5")])).unwrap_err();
        assert!(err.to_string().contains("per_minute"), "{err}");
    }
}
