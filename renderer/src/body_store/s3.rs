//! Bodies in an S3 bucket (or an S3-compatible store): one compressed object per batch.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::{check_key, BodyError, BodyStore};
use crate::deploy::aws::{check_endpoint, check_keys, describe, sdk_config, Access};

/// `[bodies.s3]`: for S3-compatible stores and local emulators. Credentials come from the SDK's
/// normal chain, unless the store has keys of its own: `access_key_id` here and
/// `CONDUCTOR__BODIES__S3__SECRET_ACCESS_KEY` in the environment (never the file).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `http://host/bucket/key` instead of `http://bucket.host/key` (MinIO, moto, Ceph).
    pub force_path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<crate::deploy::config::Secret>,
}

impl S3Settings {
    pub fn check(&self) -> Result<(), crate::deploy::config::ConfigError> {
        check_endpoint("bodies.s3.endpoint", self.endpoint.as_deref())?;
        check_keys("bodies.s3", &self.access_key_id, &self.secret_access_key)
    }
}

#[derive(Debug, Clone)]
pub struct S3BodyStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Empty, or a prefix without slashes at either end.
    prefix: String,
}

impl S3BodyStore {
    pub async fn connect(settings: &S3Settings, bucket: String, prefix: String) -> Self {
        let shared = sdk_config(Access {
            region: settings.region.as_deref(),
            endpoint: settings.endpoint.as_deref(),
            keys: Access::keys_of(&settings.access_key_id, &settings.secret_access_key),
        })
        .await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.force_path_style)
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket,
            prefix,
        }
    }

    fn object(&self, key: &str) -> Result<String, BodyError> {
        check_key(key.trim_end_matches('/'))?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }
}

fn remote(key: &str, e: impl std::error::Error + 'static) -> BodyError {
    BodyError::Remote {
        key: key.to_string(),
        reason: describe(&e),
    }
}

#[async_trait]
impl BodyStore for S3BodyStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BodyError> {
        // A PUT replaces the whole object atomically: readers see the old bytes or the new, and a
        // re-rendered batch writes the same bytes again.
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object(key)?)
            .content_type("application/zstd")
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| remote(key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, BodyError> {
        let answer = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object(key)?)
            .send()
            .await;
        let object = match answer {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(BodyError::NotFound(key.to_string()))
            }
            Err(e) => return Err(remote(key, e)),
        };
        let bytes = object.body.collect().await.map_err(|e| remote(key, e))?;
        Ok(bytes.into_bytes().to_vec())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), BodyError> {
        let full = format!("{}/", self.object(prefix)?.trim_end_matches('/'));
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| remote(prefix, e))?;
            let ids: Vec<ObjectIdentifier> = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            if ids.is_empty() {
                continue;
            }
            // A listing page holds at most 1,000 keys: exactly what one DeleteObjects takes.
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| remote(prefix, e))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| remote(prefix, e))?;
            if let Some(err) = out.errors().first() {
                return Err(BodyError::Remote {
                    key: err.key().unwrap_or(prefix).to_string(),
                    reason: format!(
                        "delete refused: {} {}",
                        err.code().unwrap_or("?"),
                        err.message().unwrap_or("")
                    ),
                });
            }
        }
        Ok(())
    }
}
