//! The rendered-batch format: one object per batch, zstd-compressed JSON.
//!
//! Messages in a batch differ only in their personal parts, so a batch compresses by one to two orders
//! of magnitude; that is what makes "render everything ahead of time" affordable for large lists.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;

/// Largest decompressed rendered batch a reader takes (1 GiB).
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderedBatch {
    pub version: u32,
    pub campaign_id: String,
    pub batch: u32,
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
    /// Headers every message of the campaign carries.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub messages: Vec<RenderedMessage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderedMessage {
    pub recipient_id: i64,
    pub to: String,
    pub to_name: Option<String>,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// This recipient's `List-Unsubscribe` value, when links are signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_unsubscribe: Option<String>,
}

/// An address with an optional display name, validated by the conductor before it gets here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    pub name: Option<String>,
    pub email: String,
}

impl std::fmt::Display for Mailbox {
    /// The header form: `"Name" <addr>`, quoting the name so commas and dots in it stay part of it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => {
                let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
                write!(f, "\"{escaped}\" <{}>", self.email)
            }
            None => f.write_str(&self.email),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchCodecError {
    #[error("rendered batch decompresses to more than {0} bytes")]
    TooLarge(u64),
    #[error("rendered batch is not valid zstd: {0}")]
    Compression(#[from] std::io::Error),
    #[error("rendered batch is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("rendered batch format {0} is not supported (expected {FORMAT_VERSION})")]
    Version(u32),
}

impl RenderedBatch {
    /// The object key of a batch; the same batch always lands on the same key.
    pub fn key(campaign_id: &str, batch: u32) -> String {
        format!("campaigns/{campaign_id}/batches/{batch}.json.zst")
    }

    pub fn encode(&self) -> Result<Vec<u8>, BatchCodecError> {
        let json = serde_json::to_vec(self)?;
        Ok(zstd::bulk::compress(&json, 3)?)
    }

    /// Decompresses whole, then parses: `serde_json::from_reader` over a decoder reads one byte per
    /// call, which made decoding the sender's largest cost. A batch that would decompress past
    /// [`MAX_DECODED_BYTES`] is refused rather than held.
    pub fn decode(bytes: &[u8]) -> Result<Self, BatchCodecError> {
        use std::io::Read;
        let decoder = zstd::Decoder::new(bytes)?;
        let mut json = Vec::with_capacity(bytes.len().saturating_mul(4));
        decoder.take(MAX_DECODED_BYTES + 1).read_to_end(&mut json)?;
        if json.len() as u64 > MAX_DECODED_BYTES {
            return Err(BatchCodecError::TooLarge(MAX_DECODED_BYTES));
        }
        let batch: Self = serde_json::from_slice(&json)?;
        if batch.version != FORMAT_VERSION {
            return Err(BatchCodecError::Version(batch.version));
        }
        Ok(batch)
    }

    pub fn message(&self, recipient_id: i64) -> Option<&RenderedMessage> {
        // Messages are written in recipient order.
        self.messages
            .binary_search_by_key(&recipient_id, |m| m.recipient_id)
            .ok()
            .map(|i| &self.messages[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_exact_and_encoding_is_deterministic() {
        let batch = RenderedBatch {
            version: FORMAT_VERSION,
            campaign_id: "c1".into(),
            batch: 3,
            from: Mailbox {
                name: Some("News".into()),
                email: "news@example.com".into(),
            },
            reply_to: None,
            headers: BTreeMap::new(),
            messages: (0..50)
                .map(|i| RenderedMessage {
                    recipient_id: i,
                    to: format!("u{i}@example.com"),
                    to_name: Some("Zoë".into()),
                    subject: "Grüße".into(),
                    html: "<p>same body</p>".repeat(100),
                    text: "same body".into(),
                    list_unsubscribe: None,
                })
                .collect(),
        };
        let bytes = batch.encode().unwrap();
        assert_eq!(bytes, batch.encode().unwrap());
        let back = RenderedBatch::decode(&bytes).unwrap();
        assert_eq!(back, batch);
        assert_eq!(back.message(7).unwrap().to, "u7@example.com");
        assert!(back.message(99).is_none());
        let raw = serde_json::to_vec(&batch).unwrap().len();
        assert!(bytes.len() * 20 < raw, "{} vs {raw}", bytes.len());
    }

    #[test]
    fn mailbox_display_quotes_names() {
        let m = Mailbox {
            name: Some(r#"Doe, "JD" Jr."#.into()),
            email: "jd@example.com".into(),
        };
        assert_eq!(m.to_string(), r#""Doe, \"JD\" Jr." <jd@example.com>"#);
        let bare = Mailbox {
            name: None,
            email: "a@b.example".into(),
        };
        assert_eq!(bare.to_string(), "a@b.example");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(RenderedBatch::decode(b"not zstd").is_err());
    }
}
