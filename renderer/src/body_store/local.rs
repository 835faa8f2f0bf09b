//! Bodies in a local (or shared) folder: the embedded default.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{BodyError, BodyStore};

#[derive(Debug, Clone)]
pub struct LocalBodyStore {
    root: PathBuf,
}

impl LocalBodyStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, BodyError> {
        super::check_key(key)?;
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
