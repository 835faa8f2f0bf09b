//! The loader for a TOML file with `CONDUCTOR__SECTION__KEY` environment overrides, shared by every
//! binary of the deployment (conductor, renderer, sender) so that one config file and one set of
//! variables describe all of it. It lives in this crate because every other crate depends on it.
//!
//! Secrets come only from the environment or from a file named in the config, never from the config
//! itself, and are never printed.

use serde::de::DeserializeOwned;

pub const ENV_PREFIX: &str = "CONDUCTOR__";

/// Keys that hold secrets: accepted from the environment only.
const SECRETS: &[&[&str]] = &[
    &["provider", "mailgun", "api_key"],
    &["provider", "sendgrid", "api_key"],
    &["provider", "postmark", "server_token"],
    &["provider", "resend", "api_key"],
    &["workers", "secret"],
    &["feedback", "mailgun", "signing_key"],
    &["unsubscribe", "secret"],
    &["feedback", "postmark", "password"],
];

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

/// `[workers]` as a worker process reads it: only the shared secret (from the environment).
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub struct WorkerSecret {
    secret: Option<String>,
}

impl WorkerSecret {
    pub fn require(self) -> Result<String, ConfigError> {
        self.secret.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            invalid(
                "workers.secret",
                "set CONDUCTOR__WORKERS__SECRET to the secret the conductor was given",
            )
        })
    }
}
