//! Signing SNS messages as SNS does, with an RSA key and a self-signed certificate generated here,
//! for tests of anything that verifies SNS deliveries (the renderer's `/sns`, the conductor's SES
//! feedback). Included by `#[path]` so both crates' tests share one copy.

#![allow(dead_code)]

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use renderer::sns::CertFetcher;
use rsa::pkcs8::EncodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest, Sha256};

pub const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem";

pub struct Keys {
    pub signing: RsaPrivateKey,
    pub cert_pem: Vec<u8>,
    pub other: RsaPrivateKey,
}

/// One key pair and self-signed certificate per test binary: key generation is the slow part.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use x509_cert::builder::{Builder, CertificateBuilder, Profile};
        use x509_cert::der::EncodePem;
        let mut rng = rsa::rand_core::OsRng;
        let signing = RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let other = RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let spki_der = signing.to_public_key().to_public_key_der().unwrap();
        let spki =
            x509_cert::spki::SubjectPublicKeyInfoOwned::try_from(spki_der.as_bytes()).unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(signing.clone());
        let cert = CertificateBuilder::new(
            Profile::Root,
            x509_cert::serial_number::SerialNumber::from(7u32),
            x509_cert::time::Validity::from_now(Duration::from_secs(3600)).unwrap(),
            x509_cert::name::Name::from_str("CN=sns.amazonaws.com").unwrap(),
            spki,
            &signer,
        )
        .unwrap()
        .build::<rsa::pkcs1v15::Signature>()
        .unwrap();
        let cert_pem = cert
            .to_pem(x509_cert::der::pem::LineEnding::LF)
            .unwrap()
            .into_bytes();
        Keys {
            signing,
            cert_pem,
            other,
        }
    })
}

/// Serves certificates from a table and counts fetches.
#[derive(Default)]
pub struct TableFetcher {
    pub certs: HashMap<String, Vec<u8>>,
    pub fetches: AtomicUsize,
}

#[async_trait]
impl CertFetcher for TableFetcher {
    async fn fetch(&self, url: &reqwest::Url) -> Result<Vec<u8>, String> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.certs
            .get(url.as_str())
            .cloned()
            .ok_or_else(|| format!("{url}: 404"))
    }
}

pub fn fetcher() -> Arc<TableFetcher> {
    Arc::new(TableFetcher {
        certs: HashMap::from([(CERT_URL.to_string(), keys().cert_pem.clone())]),
        fetches: AtomicUsize::new(0),
    })
}

/// Signs `msg` as SNS would, with the canonical string built here independently of the crate.
pub fn sign_with(msg: &mut Value, key: &RsaPrivateKey) {
    let fields: &[&str] = if msg["Type"] == "Notification" {
        &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    let mut text = String::new();
    for f in fields {
        if let Some(v) = msg[*f].as_str() {
            text.push_str(&format!("{f}\n{v}\n"));
        }
    }
    let signature = match msg["SignatureVersion"].as_str().unwrap() {
        "1" => key.sign(Pkcs1v15Sign::new::<Sha1>(), &Sha1::digest(text.as_bytes())),
        _ => key.sign(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(text.as_bytes()),
        ),
    }
    .unwrap();
    msg["Signature"] = base64::engine::general_purpose::STANDARD
        .encode(signature)
        .into();
}

pub fn signed(mut msg: Value) -> Value {
    sign_with(&mut msg, &keys().signing);
    msg
}
