//! The loader for a TOML file with `CONDUCTOR__SECTION__KEY` environment overrides, shared by every
//! binary of the deployment (conductor, renderer, sender) so that one config file and one set of
//! variables describe all of it. It lives in this crate because every other crate depends on it.
//!
//! Secrets come only from the environment or from a file named in the config, never from the config
//! itself, and are never printed.

use serde::de::DeserializeOwned;

pub const ENV_PREFIX: &str = "CONDUCTOR__";

/// Where a secret sits in the config: `["workers", "secret"]` is `[workers] secret`.
pub type SecretPath = &'static [&'static str];

/// A config file's shape, naming the keys under which it holds secrets. Each binary's config
/// declares its own (a worker knows nothing of the conductor's webhook keys): they are taken from
/// the environment only — a file that names one is refused — and read as written, never as TOML.
pub trait Secrets {
    fn secrets() -> Vec<SecretPath>;
}

/// The shared secret every worker presents to the conductor.
pub const WORKERS_SECRET: SecretPath = &["workers", "secret"];

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
pub fn load<T: DeserializeOwned + Secrets>(
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

pub fn from_toml<T: DeserializeOwned + Secrets>(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError::Parse(quoteless(&e, Some(text))))?;
    let secrets = T::secrets();
    for secret in &secrets {
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
        // A secret is whatever the variable holds, never a TOML value (`0x…` is not a number).
        let secret = secrets
            .iter()
            .any(|s| s.len() == path.len() && s.iter().zip(&path).all(|(a, b)| a == b));
        set_path(&mut table, &path, &value, secret)
            .map_err(|reason| invalid(&path.join("."), format!("from {key}: {reason}")))?;
    }
    let merged = toml::to_string(&table).map_err(|e| ConfigError::Parse(e.to_string()))?;
    toml::from_str(&merged).map_err(|e| {
        let source = if applied.is_empty() {
            String::new()
        } else {
            format!(" (with environment overrides {})", applied.join(", "))
        };
        let key = e.span().and_then(|span| key_at(&merged, span.start));
        let message = quoteless(&e, None);
        ConfigError::Parse(match key {
            Some(key) => format!("`{key}`: {message}{source}"),
            None => format!("{message}{source}"),
        })
    })
}

/// The dotted key whose line holds byte `at` of a TOML text (section headers followed), without its
/// value.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    let section = before[..line_start].lines().rev().find_map(|l| {
        l.trim()
            .strip_prefix('[')?
            .strip_suffix(']')
            .map(|s| s.trim_matches(['[', ']']))
    });
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

/// A TOML error without the source line toml quotes (it may hold a secret, a password in a URL):
/// the message names the key, and the position is given for the file as written.
fn quoteless(e: &toml::de::Error, text: Option<&str>) -> String {
    let at = text.zip(e.span()).map(|(t, span)| {
        let before = t.get(..span.start).unwrap_or(t);
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("line {line}, column {column}: ")
    });
    format!("{}{}", at.unwrap_or_default(), unquoted(e.message().trim()))
}

/// `message` with every double-quoted value (serde quotes the value it could not take) elided.
fn unquoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            if !inside {
                out.push_str("\"…");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// Sets `path` in `table` to `value`, read as a TOML value when it is one (numbers, booleans) and as a
/// string otherwise.
fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: &str,
    plain: bool,
) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut t = table;
    for p in parents {
        t = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    let parsed = (!plain)
        .then(|| format!("v = {value}").parse::<toml::Table>().ok())
        .flatten()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    t.insert(last.clone(), parsed);
    Ok(())
}

/// The one check for every URL-valued setting (endpoints, base URLs, public URLs): an absolute
/// `http://` or `https://` URL with a host; `key` names the setting in the message.
pub fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(h) if !h.is_empty() && !h.contains(char::is_whitespace) => Ok(()),
        _ => Err(invalid(
            key,
            format!("{url:?} is not an http:// or https:// URL"),
        )),
    }
}

/// A secret (an API key, a signing key, a password) as the config holds it: `Debug` never shows it,
/// so a config dump, a log line or an error cannot carry it. Read it with [`Secret::expose`] where it
/// is used.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// `[workers]` as a worker process reads it: only the shared secret (from the environment).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct WorkerSecret {
    secret: Option<Secret>,
}

impl WorkerSecret {
    pub fn require(self) -> Result<String, ConfigError> {
        self.secret
            .map(|s| s.0)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                invalid(
                    "workers.secret",
                    "set CONDUCTOR__WORKERS__SECRET to the secret the conductor was given",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    struct Probe {
        workers: WorkerSecret,
        store: StoreProbe,
    }

    impl Secrets for Probe {
        fn secrets() -> Vec<SecretPath> {
            vec![WORKERS_SECRET]
        }
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    struct StoreProbe {
        url: String,
        pool: u32,
    }

    #[test]
    fn urls_are_checked_in_one_place() {
        for ok in [
            "https://api.mailgun.net",
            "http://127.0.0.1:4566/",
            "https://h/p?q",
        ] {
            assert!(check_http_url("k", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "api.mailgun.net",
            "ftp://h",
            "https://",
            "http:///path",
            "https://a b",
        ] {
            let e = check_http_url("provider.x.base_url", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("provider.x.base_url"), "{e}");
        }
    }

    #[test]
    fn a_secret_is_never_shown_by_debug() {
        let p: Probe = from_toml("", env("CONDUCTOR__WORKERS__SECRET", "hunter2-secret")).unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    fn env(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_string(), v.to_string())]
    }

    #[test]
    fn a_secret_from_the_environment_is_taken_as_written() {
        // As TOML these would be a number, a boolean and an array.
        for value in ["0x1234abcd5678ef90", "true", "[1, 2]", "12345678901234567"] {
            let p: Probe = from_toml("", env("CONDUCTOR__WORKERS__SECRET", value)).unwrap();
            assert_eq!(p.workers.require().unwrap(), value);
        }
        // Other keys still read TOML values.
        let p: Probe = from_toml("", env("CONDUCTOR__STORE__POOL", "7")).unwrap();
        assert_eq!(p.store.pool, 7);
    }

    #[test]
    fn errors_name_the_key_but_never_quote_the_line() {
        let text = "[store]\nurl = \"postgres://u:hunter2@db/x\"\npool = \"hunter2\"\n";
        let e = from_toml::<Probe>(text, Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.pool"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let broken = "[store]\nurl = \"postgres://u:hunter2@db/x\nx";
        let e = from_toml::<Probe>(broken, Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
