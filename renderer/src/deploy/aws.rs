//! The one way this project builds AWS SDK configuration: the SDK's normal credential chain
//! (environment, profile, web identity, container or instance role), with an optional region, an
//! optional endpoint for S3/SNS/SES-compatible services and local emulators, and for those, optional
//! keys of their own.

use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::deploy::config::{invalid, ConfigError, Secret, SecretPath};

/// Where one AWS-style client connects, as a config section gives it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Access<'a> {
    pub region: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    /// Keys for this service alone (`access_key_id` in the section, `secret_access_key` from the
    /// environment): for an S3-compatible store such as MinIO or R2 whose keys are not the
    /// account's. Without them, the SDK's chain.
    pub keys: Option<(&'a str, &'a Secret)>,
}

/// The secret half of a section's own keys: `[bodies.s3]` for every binary, `[dispatch.sns]` for
/// the conductor and renderers (the conductor's `[events.sns]` and the senders' `[provider.ses]`
/// are declared by their crates).
pub const BODIES_S3_SECRET: SecretPath = &["bodies", "s3", "secret_access_key"];
pub const DISPATCH_SNS_SECRET: SecretPath = &["dispatch", "sns", "secret_access_key"];

pub async fn sdk_config(access: Access<'_>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = access.region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(endpoint) = access.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some((id, secret)) = access.keys {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            id,
            secret.expose(),
            None,
            None,
            "config",
        ));
    }
    loader.load().await
}

impl<'a> Access<'a> {
    /// The keys when both halves are given ([`check_keys`] refuses one without the other).
    pub fn keys_of(
        access_key_id: &'a Option<String>,
        secret_access_key: &'a Option<Secret>,
    ) -> Option<(&'a str, &'a Secret)> {
        let id = access_key_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        id.zip(
            secret_access_key
                .as_ref()
                .filter(|s| !s.expose().trim().is_empty()),
        )
    }
}

/// A section's own keys: both halves or neither; `section` names it in messages (`bodies.s3`).
pub fn check_keys(
    section: &str,
    access_key_id: &Option<String>,
    secret_access_key: &Option<Secret>,
) -> Result<(), ConfigError> {
    let id = access_key_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let secret = secret_access_key
        .as_ref()
        .filter(|s| !s.expose().trim().is_empty());
    let var = format!(
        "{}{}__SECRET_ACCESS_KEY",
        crate::deploy::config::ENV_PREFIX,
        section.replace('.', "__").to_ascii_uppercase()
    );
    match (id, secret) {
        (Some(_), Some(_)) | (None, None) => Ok(()),
        (Some(_), None) => Err(invalid(
            &format!("{section}.secret_access_key"),
            format!("`access_key_id` is set without its secret: set {var}"),
        )),
        (None, Some(_)) => Err(invalid(
            &format!("{section}.access_key_id"),
            format!("{var} is set: give the key id it belongs to"),
        )),
    }
}

/// An endpoint override must be an absolute http(s) URL; `key` names the setting in messages.
pub fn check_endpoint(key: &str, endpoint: Option<&str>) -> Result<(), ConfigError> {
    endpoint.map_or(Ok(()), |e| crate::deploy::config::check_http_url(key, e))
}

/// The message of an SDK error with its causes, which `Display` alone leaves out.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `[dispatch]`: how render jobs reach renderers. Read by the conductor (which publishes) and by
/// `renderer` processes (which subscribe and pin the topic), so it lives with the render contract.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    pub mode: DispatchMode,
    /// A batch handed out but not reported rendered after this long is handed out again; a
    /// renderer's claim on a batch lasts as long.
    pub redispatch_after_ms: u64,
    pub sns: SnsTopic,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            mode: DispatchMode::Local,
            redispatch_after_ms: 60_000,
            sns: SnsTopic::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DispatchMode {
    /// In-process channels to the conductor's own render workers.
    Local,
    /// One SNS notification per batch, delivered to `renderer` services over HTTP(S).
    Sns,
}

/// An SNS topic and how to reach the SNS API (`[dispatch.sns]`, `[events.sns]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnsTopic {
    pub topic_arn: String,
    pub region: Option<String>,
    /// For SNS-compatible services and emulators.
    pub endpoint: Option<String>,
    /// With `secret_access_key` (from the environment only): keys of its own, instead of the
    /// SDK's chain.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
}

impl SnsTopic {
    /// `key` is the section, e.g. `dispatch.sns`.
    pub fn check(&self, key: &str) -> Result<(), crate::deploy::config::ConfigError> {
        let arn = self.topic_arn.trim();
        if !(arn.starts_with("arn:") && arn.split(':').count() == 6) {
            return Err(crate::deploy::config::invalid(
                &format!("{key}.topic_arn"),
                format!("{arn:?} is not a topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"),
            ));
        }
        check_endpoint(&format!("{key}.endpoint"), self.endpoint.as_deref())?;
        check_keys(key, &self.access_key_id, &self.secret_access_key)
    }

    /// The region to use: the configured one, else the ARN's own.
    pub fn region(&self) -> Option<&str> {
        self.region
            .as_deref()
            .or_else(|| self.topic_arn.split(':').nth(3).filter(|r| !r.is_empty()))
    }

    pub async fn client(&self) -> aws_sdk_sns::Client {
        let access = Access {
            region: self.region(),
            endpoint: self.endpoint.as_deref(),
            keys: Access::keys_of(&self.access_key_id, &self.secret_access_key),
        };
        aws_sdk_sns::Client::new(&sdk_config(access).await)
    }
}

impl DispatchConfig {
    pub fn check(&self) -> Result<(), crate::deploy::config::ConfigError> {
        if self.redispatch_after_ms < 5_000 {
            return Err(crate::deploy::config::invalid(
                "dispatch.redispatch_after_ms",
                "must be at least 5000",
            ));
        }
        if self.mode == DispatchMode::Sns {
            self.sns.check("dispatch.sns")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sections_own_keys_come_in_pairs_and_the_secret_never_from_the_file() {
        let id = Some("AKIDEXAMPLE".to_string());
        let secret = Some(Secret::from("wJalrXUtnFEMI"));
        assert!(check_keys("bodies.s3", &id, &secret).is_ok());
        assert!(check_keys("bodies.s3", &None, &None).is_ok());
        assert_eq!(
            Access::keys_of(&id, &secret).map(|(i, s)| (i, s.expose())),
            Some(("AKIDEXAMPLE", "wJalrXUtnFEMI"))
        );
        let half = check_keys("bodies.s3", &id, &None).unwrap_err().to_string();
        assert!(
            half.contains("bodies.s3.secret_access_key")
                && half.contains("CONDUCTOR__BODIES__S3__SECRET_ACCESS_KEY"),
            "{half}"
        );
        let other = check_keys("dispatch.sns", &None, &secret)
            .unwrap_err()
            .to_string();
        assert!(other.contains("dispatch.sns.access_key_id"), "{other}");
        assert!(!other.contains("wJalrXUtnFEMI"), "{other}");
        assert_eq!(Access::keys_of(&id, &None), None);

        #[derive(Debug, serde::Deserialize)]
        struct Probe {
            bodies: Bodies,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Bodies {
            s3: crate::body_store::S3Settings,
        }
        impl crate::deploy::config::Secrets for Probe {
            fn secrets() -> Vec<SecretPath> {
                vec![BODIES_S3_SECRET]
            }
        }
        let text = "[bodies.s3]\naccess_key_id = \"AKIDEXAMPLE\"\n";
        let in_file = format!("{text}secret_access_key = \"wJalrXUtnFEMI\"\n");
        let refused = crate::deploy::config::from_toml::<Probe>(&in_file, [])
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("not read from the config file"),
            "{refused}"
        );
        assert!(!refused.contains("wJalrXUtnFEMI"), "{refused}");
        // From the environment, read as written (a secret that looks like a number stays a string).
        let env = [(
            "CONDUCTOR__BODIES__S3__SECRET_ACCESS_KEY".to_string(),
            "0x1234".to_string(),
        )];
        let p: Probe = crate::deploy::config::from_toml(text, env).unwrap();
        assert!(p.bodies.s3.check().is_ok());
        assert_eq!(
            p.bodies.s3.secret_access_key.as_ref().map(Secret::expose),
            Some("0x1234")
        );
        assert!(!format!("{p:?}").contains("0x1234"));
    }
}
