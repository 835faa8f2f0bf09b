//! Where rendered batches wait for senders: a local folder here, S3 in distributed mode.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

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
}

#[async_trait]
pub trait BodyStore: Send + Sync + 'static {
    /// Writing the same key twice with the same bytes is harmless (re-rendered batches do exactly that).
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BodyError>;
    async fn get(&self, key: &str) -> Result<Vec<u8>, BodyError>;
    /// Removes every object under `prefix` (a campaign's bodies after it ends).
    async fn delete_prefix(&self, prefix: &str) -> Result<(), BodyError>;
}

/// `[bodies]`: where rendered batches are kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BodiesConfig {
    pub url: String,
}

impl Default for BodiesConfig {
    fn default() -> Self {
        Self {
            url: "file://data/bodies".into(),
        }
    }
}

/// Where bodies are kept, from a URL: `file://PATH` (a local or shared folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
}

impl Location {
    pub fn parse(url: &str) -> Result<Self, String> {
        match url.trim().strip_prefix("file://") {
            Some(path) if !path.is_empty() => Ok(Location::Local(PathBuf::from(path))),
            _ => Err(format!("{url:?} is not file://PATH")),
        }
    }

    pub fn open(&self) -> Arc<dyn BodyStore> {
        match self {
            Location::Local(path) => Arc::new(LocalBodyStore::new(path)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LocalBodyStore {
    root: PathBuf,
}

impl LocalBodyStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, BodyError> {
        let ok = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        if !ok {
            return Err(BodyError::BadKey(key.to_string()));
        }
        Ok(self.root.join(key))
    }
}

fn io(key: &str) -> impl FnOnce(std::io::Error) -> BodyError + '_ {
    move |source| BodyError::Io {
        key: key.to_string(),
        source,
    }
}

#[async_trait]
impl BodyStore for LocalBodyStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BodyError> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io(key))?;
        }
        // Write-then-rename: a reader never sees half an object, and a crash leaves no torn file.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        tokio::fs::write(&tmp, bytes).await.map_err(io(key))?;
        tokio::fs::rename(&tmp, &path).await.map_err(io(key))
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, BodyError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BodyError::NotFound(key.to_string()))
            }
            Err(e) => Err(io(key)(e)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), BodyError> {
        let path = self.path(prefix.trim_end_matches('/'))?;
        match tokio::fs::remove_dir_all(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(prefix)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_overwrite_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBodyStore::new(dir.path());
        store
            .put("campaigns/c/batches/0.json.zst", b"one".to_vec())
            .await
            .unwrap();
        store
            .put("campaigns/c/batches/0.json.zst", b"one".to_vec())
            .await
            .unwrap();
        assert_eq!(
            store.get("campaigns/c/batches/0.json.zst").await.unwrap(),
            b"one"
        );
        store.delete_prefix("campaigns/c/").await.unwrap();
        assert!(matches!(
            store.get("campaigns/c/batches/0.json.zst").await,
            Err(BodyError::NotFound(_))
        ));
        store.delete_prefix("campaigns/c/").await.unwrap();
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBodyStore::new(dir.path());
        for key in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            assert!(
                matches!(store.get(key).await, Err(BodyError::BadKey(_))),
                "{key}"
            );
        }
    }
}
