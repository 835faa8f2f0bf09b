//! The one way this project builds AWS SDK configuration: the SDK's normal credential chain
//! (environment, profile, web identity, container or instance role), with an optional region and an
//! optional endpoint for S3/SNS-compatible services and local emulators.

use aws_config::{BehaviorVersion, Region, SdkConfig};

pub async fn sdk_config(region: Option<&str>, endpoint: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// An endpoint override must be an absolute http(s) URL; `key` names the setting in messages.
pub fn check_endpoint(
    key: &str,
    endpoint: Option<&str>,
) -> Result<(), crate::deploy::config::ConfigError> {
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
        check_endpoint(&format!("{key}.endpoint"), self.endpoint.as_deref())
    }

    /// The region to use: the configured one, else the ARN's own.
    pub fn region(&self) -> Option<&str> {
        self.region
            .as_deref()
            .or_else(|| self.topic_arn.split(':').nth(3).filter(|r| !r.is_empty()))
    }

    pub async fn client(&self) -> aws_sdk_sns::Client {
        aws_sdk_sns::Client::new(&sdk_config(self.region(), self.endpoint.as_deref()).await)
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
