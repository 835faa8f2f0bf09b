//! The rendered-batch format: one object per batch, zstd-compressed.
//!
//! Messages in a batch differ only in their personal parts, so a batch compresses by one to two orders
//! of magnitude; that is what makes "render everything ahead of time" affordable for large lists.
//!
//! Inside the compression, format 2 is length-prefixed fields ([`MAGIC`], then the version, then
//! each field in declaration order: strings as a little-endian `u32` length and UTF-8 bytes,
//! options as a 0/1 byte before the value). Format 1 was JSON: HTML is mostly characters JSON
//! escapes, and writing and parsing those escapes was a tenth of the uncapped send path's CPU.
//! Format 1 objects written before an upgrade are still read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 2;

/// The first bytes of a format-2 batch once decompressed (a format-1 batch starts with `{`).
pub const MAGIC: &[u8; 4] = b"RBAT";

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
    #[error("rendered batch is cut short or malformed: {0}")]
    Malformed(&'static str),
}

impl RenderedBatch {
    /// The object key of a batch; the same batch always lands on the same key.
    pub fn key(campaign_id: &str, batch: u32) -> String {
        format!("campaigns/{campaign_id}/batches/{batch}.batch.zst")
    }

    /// Where a renderer from before format 2 writes the batch (format 1): still accepted from one,
    /// so that renderers can be upgraded after senders, which read both formats.
    pub fn format_one_key(campaign_id: &str, batch: u32) -> String {
        format!("campaigns/{campaign_id}/batches/{batch}.json.zst")
    }

    /// Format 2, compressed. Deterministic: the same batch is always the same bytes.
    pub fn encode(&self) -> Result<Vec<u8>, BatchCodecError> {
        let size = self
            .messages
            .iter()
            .map(|m| {
                m.to.len()
                    + m.subject.len()
                    + m.html.len()
                    + m.text.len()
                    + m.to_name.as_ref().map_or(0, String::len)
                    + m.list_unsubscribe.as_ref().map_or(0, String::len)
                    + 40
            })
            .sum::<usize>();
        let mut w = Writer(Vec::with_capacity(size + 256));
        w.0.extend_from_slice(MAGIC);
        w.u32(self.version);
        w.str(&self.campaign_id);
        w.u32(self.batch);
        w.mailbox(&self.from);
        w.opt(self.reply_to.as_ref(), Writer::mailbox);
        w.len(self.headers.len());
        for (name, value) in &self.headers {
            w.str(name);
            w.str(value);
        }
        w.len(self.messages.len());
        for m in &self.messages {
            w.0.extend_from_slice(&m.recipient_id.to_le_bytes());
            w.str(&m.to);
            w.opt(m.to_name.as_ref(), |w, n| w.str(n));
            w.str(&m.subject);
            w.str(&m.html);
            w.str(&m.text);
            w.opt(m.list_unsubscribe.as_ref(), |w, u| w.str(u));
        }
        Ok(zstd::bulk::compress(&w.0, 3)?)
    }

    /// Decompresses whole, then reads format 2 (or format 1's JSON): `serde_json::from_reader` over
    /// a decoder reads one byte per call, which had made decoding the sender's largest cost. A
    /// batch that would decompress past [`MAX_DECODED_BYTES`] is refused rather than held.
    pub fn decode(bytes: &[u8]) -> Result<Self, BatchCodecError> {
        use std::io::Read;
        let decoder = zstd::Decoder::new(bytes)?;
        let mut raw = Vec::with_capacity(bytes.len().saturating_mul(4));
        decoder.take(MAX_DECODED_BYTES + 1).read_to_end(&mut raw)?;
        if raw.len() as u64 > MAX_DECODED_BYTES {
            return Err(BatchCodecError::TooLarge(MAX_DECODED_BYTES));
        }
        if raw.first() == Some(&b'{') {
            let batch: Self = serde_json::from_slice(&raw)?;
            return match batch.version {
                1 => Ok(batch),
                v => Err(BatchCodecError::Version(v)),
            };
        }
        let mut r = Reader(&raw);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(BatchCodecError::Malformed("not a rendered batch"));
        }
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(BatchCodecError::Version(version));
        }
        let campaign_id = r.str()?;
        let batch = r.u32()?;
        let from = r.mailbox()?;
        let reply_to = r.opt(Reader::mailbox)?;
        let mut headers = BTreeMap::new();
        for _ in 0..r.u32()? {
            headers.insert(r.str()?, r.str()?);
        }
        let count = r.u32()? as usize;
        // A message takes at least 26 bytes: a corrupt count cannot reserve more than the input.
        let mut messages = Vec::with_capacity(count.min(r.0.len() / 26));
        for _ in 0..count {
            messages.push(RenderedMessage {
                recipient_id: i64::from_le_bytes(r.array()?),
                to: r.str()?,
                to_name: r.opt(Reader::str)?,
                subject: r.str()?,
                html: r.str()?,
                text: r.str()?,
                list_unsubscribe: r.opt(Reader::str)?,
            });
        }
        if !r.0.is_empty() {
            return Err(BatchCodecError::Malformed("bytes after the last message"));
        }
        Ok(Self {
            version,
            campaign_id,
            batch,
            from,
            reply_to,
            headers,
            messages,
        })
    }

    pub fn message(&self, recipient_id: i64) -> Option<&RenderedMessage> {
        // Messages are written in recipient order.
        self.messages
            .binary_search_by_key(&recipient_id, |m| m.recipient_id)
            .ok()
            .map(|i| &self.messages[i])
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, n: u32) {
        self.0.extend_from_slice(&n.to_le_bytes());
    }

    fn len(&mut self, n: usize) {
        // A batch is bounded far below 4 GiB by `MAX_DECODED_BYTES`.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn opt<T>(&mut self, v: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match v {
            Some(v) => {
                self.0.push(1);
                write(self, v);
            }
            None => self.0.push(0),
        }
    }

    fn mailbox(&mut self, m: &Mailbox) {
        self.opt(m.name.as_ref(), |w, n| w.str(n));
        self.str(&m.email);
    }
}

/// Reads format 2 from the front of a slice; every length is checked against what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BatchCodecError> {
        if n > self.0.len() {
            return Err(BatchCodecError::Malformed("a field runs past the end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BatchCodecError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, BatchCodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<String, BatchCodecError> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| BatchCodecError::Malformed("a text field is not UTF-8"))
    }

    fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, BatchCodecError>,
    ) -> Result<Option<T>, BatchCodecError> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(BatchCodecError::Malformed(
                "an option tag is neither 0 nor 1",
            )),
        }
    }

    fn mailbox(&mut self) -> Result<Mailbox, BatchCodecError> {
        Ok(Mailbox {
            name: self.opt(Reader::str)?,
            email: self.str()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RenderedBatch {
        RenderedBatch {
            version: FORMAT_VERSION,
            campaign_id: "c1".into(),
            batch: 3,
            from: Mailbox {
                name: Some("News".into()),
                email: "news@example.com".into(),
            },
            reply_to: Some(Mailbox {
                name: None,
                email: "help@example.com".into(),
            }),
            headers: BTreeMap::from([("X-Campaign".to_string(), "c1".to_string())]),
            messages: (0..50)
                .map(|i| RenderedMessage {
                    recipient_id: i - 3,
                    to: format!("u{i}@example.com"),
                    to_name: (i % 2 == 0).then(|| "Zoë".into()),
                    subject: "Grüße \"quoted\"".into(),
                    html: "<p class=\"x\">same body</p>\n".repeat(100),
                    text: "same body".into(),
                    list_unsubscribe: (i % 3 == 0).then(|| format!("<https://u.example/{i}>")),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_is_exact_and_encoding_is_deterministic() {
        let batch = sample();
        let bytes = batch.encode().unwrap();
        assert_eq!(bytes, batch.encode().unwrap());
        let back = RenderedBatch::decode(&bytes).unwrap();
        assert_eq!(back, batch);
        assert_eq!(back.message(4).unwrap().to, "u7@example.com");
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
        let whole = zstd::bulk::decompress(&sample().encode().unwrap(), 1 << 20).unwrap();
        // Every cut of a valid batch is refused, never misread and never a panic.
        for cut in 0..whole.len() {
            let bytes = zstd::bulk::compress(&whole[..cut], 1).unwrap();
            assert!(RenderedBatch::decode(&bytes).is_err(), "cut at {cut}");
        }
        let mut longer = whole.clone();
        longer.push(0);
        let bytes = zstd::bulk::compress(&longer, 1).unwrap();
        assert!(matches!(
            RenderedBatch::decode(&bytes),
            Err(BatchCodecError::Malformed(_))
        ));
    }

    #[test]
    fn format_one_written_before_an_upgrade_is_still_read() {
        let mut b = sample();
        b.version = 1;
        let json = zstd::bulk::compress(&serde_json::to_vec(&b).unwrap(), 3).unwrap();
        assert_eq!(RenderedBatch::decode(&json).unwrap(), b);
        b.version = 7;
        let json = zstd::bulk::compress(&serde_json::to_vec(&b).unwrap(), 3).unwrap();
        assert!(matches!(
            RenderedBatch::decode(&json),
            Err(BatchCodecError::Version(7))
        ));
    }
}
