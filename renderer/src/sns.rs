//! Amazon SNS HTTP(S) deliveries: parsing, and proving a message came from SNS before acting on it.
//!
//! SNS signs each message with the key of an X.509 certificate it serves from `SigningCertURL`. The
//! checks here, in order: the topic is one we expect (before fetching anything a stranger named), the
//! signature version is known, the certificate URL is https on an SNS host and names a `.pem`, and the
//! RSA PKCS#1 v1.5 signature (SHA1 for version 1, SHA256 for version 2) over the canonical string
//! verifies. No AWS crate does this; the rules are AWS's "Verifying the signatures of Amazon SNS
//! messages".

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    SubscriptionConfirmation,
    Notification,
    UnsubscribeConfirmation,
}

/// One delivery, as SNS posts it (JSON, although its `Content-Type` says `text/plain`). The signing
/// fields may be absent when parsing (emulators omit them); verification then refuses the message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SnsMessage {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "MessageId")]
    pub message_id: String,
    #[serde(rename = "TopicArn")]
    pub topic_arn: String,
    #[serde(rename = "Subject")]
    pub subject: Option<String>,
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: String,
    #[serde(rename = "SignatureVersion", default)]
    pub signature_version: String,
    #[serde(rename = "Signature", default)]
    pub signature: String,
    #[serde(rename = "SigningCertURL", default)]
    pub signing_cert_url: String,
    #[serde(rename = "SubscribeURL")]
    pub subscribe_url: Option<String>,
    #[serde(rename = "Token")]
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnsError {
    #[error("not an SNS message: {0}")]
    Malformed(String),
    #[error("unknown SNS message type {0:?}")]
    UnknownType(String),
    #[error("unknown SignatureVersion {0:?}")]
    UnknownVersion(String),
    #[error("signing certificate URL refused: {0}")]
    CertUrl(String),
    #[error("cannot fetch the signing certificate: {0}")]
    CertFetch(String),
    #[error("signing certificate unusable: {0}")]
    Cert(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("topic {0} is not one this service subscribes to")]
    UnexpectedTopic(String),
}

impl SnsMessage {
    pub fn parse(raw: &[u8]) -> Result<Self, SnsError> {
        serde_json::from_slice(raw).map_err(|e| SnsError::Malformed(e.to_string()))
    }

    pub fn message_type(&self) -> Result<MessageType, SnsError> {
        match self.kind.as_str() {
            "SubscriptionConfirmation" => Ok(MessageType::SubscriptionConfirmation),
            "Notification" => Ok(MessageType::Notification),
            "UnsubscribeConfirmation" => Ok(MessageType::UnsubscribeConfirmation),
            other => Err(SnsError::UnknownType(other.to_string())),
        }
    }

    /// The canonical text SNS signed: `Key\nValue\n` for each key present, in the documented order.
    pub fn string_to_sign(&self) -> Result<String, SnsError> {
        let mut out = String::with_capacity(self.message.len() + 512);
        let mut add = |k: &str, v: &str| {
            out.push_str(k);
            out.push('\n');
            out.push_str(v);
            out.push('\n');
        };
        let missing = |k: &str| SnsError::Malformed(format!("{} without {k}", self.kind));
        match self.message_type()? {
            MessageType::Notification => {
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                if let Some(s) = &self.subject {
                    add("Subject", s);
                }
                add("Timestamp", &self.timestamp);
                add("TopicArn", &self.topic_arn);
                add("Type", &self.kind);
            }
            MessageType::SubscriptionConfirmation | MessageType::UnsubscribeConfirmation => {
                let url = self
                    .subscribe_url
                    .as_deref()
                    .ok_or_else(|| missing("SubscribeURL"))?;
                let token = self.token.as_deref().ok_or_else(|| missing("Token"))?;
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                add("SubscribeURL", url);
                add("Timestamp", &self.timestamp);
                add("Token", token);
                add("TopicArn", &self.topic_arn);
                add("Type", &self.kind);
            }
        }
        Ok(out)
    }
}

/// True for the hosts SNS serves from: `sns.<region>.amazonaws.com` (or `.com.cn`).
pub fn is_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"));
    region
        .is_some_and(|r| r.len() >= 3 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// `SigningCertURL` must be https, on an SNS host, with no credentials or port tricks, naming a `.pem`.
pub fn check_cert_url(raw: &str) -> Result<reqwest::Url, SnsError> {
    let refuse = |why: &str| SnsError::CertUrl(format!("{raw:?}: {why}"));
    let url = reqwest::Url::parse(raw).map_err(|e| refuse(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(refuse("not https"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
        return Err(refuse("credentials or a port in the URL"));
    }
    if !url.host_str().is_some_and(is_sns_host) {
        return Err(refuse("not an SNS host"));
    }
    if !url.path().ends_with(".pem") || url.query().is_some() || url.fragment().is_some() {
        return Err(refuse("not a .pem certificate"));
    }
    Ok(url)
}

/// The RSA key of a PEM certificate.
pub fn public_key(cert_pem: &[u8]) -> Result<RsaPublicKey, SnsError> {
    use x509_cert::der::{DecodePem, Encode};
    let cert = x509_cert::Certificate::from_pem(cert_pem)
        .map_err(|e| SnsError::Cert(format!("not a PEM certificate: {e}")))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| SnsError::Cert(e.to_string()))?;
    RsaPublicKey::from_public_key_der(&spki)
        .map_err(|e| SnsError::Cert(format!("not an RSA key: {e}")))
}

/// Checks `msg`'s signature with `key`. Pure: no I/O, no clock.
pub fn verify_with(msg: &SnsMessage, key: &RsaPublicKey) -> Result<(), SnsError> {
    let text = msg.string_to_sign()?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(msg.signature.trim())
        .map_err(|_| SnsError::BadSignature)?;
    let ok = match msg.signature_version.as_str() {
        "1" => key.verify(
            Pkcs1v15Sign::new::<Sha1>(),
            &Sha1::digest(text.as_bytes()),
            &signature,
        ),
        "2" => key.verify(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(text.as_bytes()),
            &signature,
        ),
        other => return Err(SnsError::UnknownVersion(other.to_string())),
    };
    ok.map_err(|_| SnsError::BadSignature)
}

/// Where certificates come from: HTTPS in production, a table in tests.
#[async_trait]
pub trait CertFetcher: Send + Sync + 'static {
    async fn fetch(&self, url: &reqwest::Url) -> Result<Vec<u8>, String>;
}

pub struct HttpsCertFetcher {
    client: reqwest::Client,
}

impl HttpsCertFetcher {
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                // A redirect could lead off the SNS host the URL was checked against.
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }
}

#[async_trait]
impl CertFetcher for HttpsCertFetcher {
    async fn fetch(&self, url: &reqwest::Url) -> Result<Vec<u8>, String> {
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        Ok(bytes.to_vec())
    }
}

/// An HTTP client for confirming subscriptions: short timeout, no redirects (a redirect could lead
/// off the SNS host the URL was checked against).
pub fn confirm_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a plain HTTP client builds")
}

/// Confirms a subscription by fetching its `SubscribeURL` — only after the message verified, and,
/// when signatures are checked, only towards an SNS host over https (the signature covers the URL,
/// but a confirmation is a request we make on a stranger's say-so).
pub async fn confirm_subscription(
    client: &reqwest::Client,
    verifier: &Verifier,
    subscribe_url: &str,
) -> Result<(), String> {
    if verifier.verifies_signatures() {
        let parsed = reqwest::Url::parse(subscribe_url).map_err(|e| e.to_string())?;
        if parsed.scheme() != "https" || !parsed.host_str().is_some_and(is_sns_host) {
            return Err(format!(
                "SubscribeURL {subscribe_url:?} is not on an SNS host"
            ));
        }
    }
    let response = client
        .get(subscribe_url)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("confirmation answered {}", response.status()))
    }
}

/// SNS rotates its signing certificate rarely; a handful of cached keys covers every region in use.
const CERT_CACHE: usize = 32;

/// Decides whether a delivery is genuine. With `verify` off (for emulators that cannot sign, such as
/// moto) only the topic is checked; that switch exists only as explicit configuration.
pub struct Verifier {
    topics: HashSet<String>,
    verify: bool,
    fetcher: Arc<dyn CertFetcher>,
    keys: Mutex<HashMap<String, Arc<RsaPublicKey>>>,
}

impl Verifier {
    pub fn new(
        topics: impl IntoIterator<Item = String>,
        verify: bool,
        fetcher: Arc<dyn CertFetcher>,
    ) -> Self {
        Self {
            topics: topics.into_iter().collect(),
            verify,
            fetcher,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// False only for emulators that cannot sign.
    pub fn verifies_signatures(&self) -> bool {
        self.verify
    }

    pub async fn check(&self, raw: &[u8]) -> Result<SnsMessage, SnsError> {
        let msg = SnsMessage::parse(raw)?;
        msg.message_type()?;
        if !self.topics.contains(&msg.topic_arn) {
            return Err(SnsError::UnexpectedTopic(msg.topic_arn));
        }
        if !self.verify {
            return Ok(msg);
        }
        if !matches!(msg.signature_version.as_str(), "1" | "2") {
            return Err(SnsError::UnknownVersion(msg.signature_version));
        }
        let url = check_cert_url(&msg.signing_cert_url)?;
        let key = self.key(&url).await?;
        verify_with(&msg, &key)?;
        Ok(msg)
    }

    async fn key(&self, url: &reqwest::Url) -> Result<Arc<RsaPublicKey>, SnsError> {
        let cached = self
            .keys
            .lock()
            .expect("key cache poisoned")
            .get(url.as_str())
            .cloned();
        if let Some(key) = cached {
            return Ok(key);
        }
        let pem = self.fetcher.fetch(url).await.map_err(SnsError::CertFetch)?;
        let key = Arc::new(public_key(&pem)?);
        let mut keys = self.keys.lock().expect("key cache poisoned");
        if keys.len() >= CERT_CACHE {
            keys.clear();
        }
        keys.insert(url.to_string(), key.clone());
        Ok(key)
    }
}

/// Remembers the last `capacity` message ids: SNS retries a delivery with the same `MessageId`.
pub struct SeenIds {
    capacity: usize,
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl SeenIds {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// True the first time `id` is offered.
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_serve_certificates() {
        for good in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
        ] {
            assert!(check_cert_url(good).is_ok(), "{good}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/x.pem",
            "https://sns.us-east-1.amazonaws.com@evil.com/x.pem",
            "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://sns.us-east-1.amazonaws.com/x.pem?x=1",
            "https://sns.us-east-1.amazonaws.com/x.txt",
            "https://sns.xx.amazonaws.com/x.pem",
            "https://s3.amazonaws.com/x.pem",
            "not a url",
        ] {
            assert!(check_cert_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retried_message_ids_are_seen_once() {
        let mut seen = SeenIds::new(2);
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c")); // "a" falls out
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("c"));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any bytes are an envelope or a clear error; the string to sign is built or refused.
        #[test]
        fn any_bytes_parse_or_are_refused(raw in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(m) = SnsMessage::parse(&raw) {
                let _ = m.message_type();
                let _ = m.string_to_sign();
            }
        }

        #[test]
        fn any_envelope_shape_is_read_without_panic(
            kind in prop::sample::select(vec!["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation", "Other"]),
            message in "\\PC{0,50}",
            subject in proptest::option::of("\\PC{0,20}"),
        ) {
            let raw = serde_json::json!({
                "Type": kind, "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t",
                "Message": message, "Subject": subject, "Timestamp": "2026-01-01T00:00:00Z",
                "SignatureVersion": "1", "Signature": "c2ln", "SigningCertURL": "https://sns.us-east-1.amazonaws.com/c.pem",
            });
            if let Ok(m) = SnsMessage::parse(raw.to_string().as_bytes()) {
                let _ = m.message_type();
                let _ = m.string_to_sign();
            }
        }
    }
}
