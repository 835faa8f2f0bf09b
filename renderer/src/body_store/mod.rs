//! Where rendered batches wait for senders: a local folder (embedded) or an S3 bucket (distributed).

mod local;
mod s3;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

pub use local::LocalBodyStore;
pub use s3::{S3BodyStore, S3Settings};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("no object at {0}")]
    NotFound(String),
    #[error("object key {0:?} is not valid")]
    BadKey(String),
    #[error("body store I/O on {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object store on {key}: {reason}")]
    Remote { key: String, reason: String },
}

#[async_trait]
pub trait BodyStore: Send + Sync + 'static {
    /// Writing the same key twice with the same bytes is harmless (re-rendered batches do exactly that).
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BodyError>;
    async fn get(&self, key: &str) -> Result<Vec<u8>, BodyError>;
    /// Removes every object under `prefix` (a campaign's bodies after it ends). Nothing there is fine.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), BodyError>;
}

/// Keys are relative paths made of plain segments, so that no key can leave its folder or prefix.
pub fn check_key(key: &str) -> Result<(), BodyError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if ok {
        Ok(())
    } else {
        Err(BodyError::BadKey(key.to_string()))
    }
}

/// `[bodies]`: where rendered batches are kept, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BodiesConfig {
    /// `file://PATH` or `s3://BUCKET[/PREFIX]`.
    pub url: String,
    /// A campaign's bodies are deleted this many days after it ends (completed or cancelled).
    pub retention_days: u32,
    pub s3: S3Settings,
}

impl Default for BodiesConfig {
    fn default() -> Self {
        Self {
            url: "file://data/bodies".into(),
            retention_days: 7,
            s3: S3Settings::default(),
        }
    }
}

impl BodiesConfig {
    /// Checks the settings without touching the store; the message names the key at fault.
    pub fn location(&self) -> Result<Location, crate::deploy::config::ConfigError> {
        let location = Location::parse(&self.url)
            .map_err(|r| crate::deploy::config::invalid("bodies.url", r))?;
        if matches!(location, Location::S3 { .. }) {
            self.s3.check()?;
        }
        Ok(location)
    }

    pub async fn open(&self) -> Result<Arc<dyn BodyStore>, crate::deploy::config::ConfigError> {
        Ok(match self.location()? {
            Location::Local(path) => Arc::new(LocalBodyStore::new(path)),
            Location::S3 { bucket, prefix } => {
                Arc::new(S3BodyStore::connect(&self.s3, bucket, prefix).await)
            }
        })
    }
}

/// Where bodies are kept, from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(format!("{url:?} names no folder: file://PATH"));
            }
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            // S3's bucket naming rules: 3–63 of a-z 0-9 . -, starting and ending alphanumeric.
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                })
                && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
                && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !bucket_ok {
                return Err(format!(
                    "{bucket:?} is not an S3 bucket name (3–63 characters of a-z, 0-9, '.', '-')"
                ));
            }
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty() {
                check_key(prefix).map_err(|_| format!("{prefix:?} is not a usable key prefix"))?;
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        Err(format!(
            "{url:?} is neither file://PATH nor s3://BUCKET/PREFIX"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_or_say_why_not() {
        assert_eq!(
            Location::parse("file://data/bodies").unwrap(),
            Location::Local("data/bodies".into())
        );
        assert_eq!(
            Location::parse("s3://mail-bodies/prod/eu/").unwrap(),
            Location::S3 {
                bucket: "mail-bodies".into(),
                prefix: "prod/eu".into()
            }
        );
        assert_eq!(
            Location::parse("s3://mail-bodies").unwrap(),
            Location::S3 {
                bucket: "mail-bodies".into(),
                prefix: String::new()
            }
        );
        for bad in [
            "",
            "file://",
            "http://x",
            "s3://",
            "s3://Upper",
            "s3://ab",
            "s3://b-/x",
            "s3://bucket/a/../b",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_plain_relative_paths() {
        for good in ["campaigns/c/batches/0.json.zst", "a"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "", "a/"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
