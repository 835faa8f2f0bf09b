//! `conductor campaign …`: the REST API from the command line. Create from a template folder and a
//! CSV, list, show, pause, resume, cancel, and `watch` a send on its event stream with progress bars,
//! exiting with a status that says how it ended.

pub mod demo;

use std::path::Path;
use std::time::Duration;

use crate::http::stream::Snapshot;
use crate::store::{Campaign, Status};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// How a watched campaign ended, as the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Completed with every recipient sent.
    Sent = 0,
    /// Completed, but some recipients failed or are in doubt.
    Incomplete = 3,
    /// Paused (by a person, or by the system with a reason such as a refused account).
    Paused = 4,
    Cancelled = 5,
}

impl Ending {
    /// From a progress frame's status and counts; `None` while the campaign goes on.
    pub fn of(frame: &Snapshot) -> Option<Self> {
        let k = &frame.counts;
        match frame.status {
            Status::Completed if k.failed + k.unknown == 0 => Some(Ending::Sent),
            Status::Completed => Some(Ending::Incomplete),
            Status::Paused => Some(Ending::Paused),
            Status::Cancelled => Some(Ending::Cancelled),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server's problem+json, shown as it says.
    #[error("{status}: {title}: {detail}")]
    Refused {
        status: u16,
        title: String,
        detail: String,
    },
    #[error("an answer the client cannot read: {0}")]
    Unreadable(String),
    #[error("stream from {0} ended before the campaign did")]
    StreamEnded(String),
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            http: reqwest::Client::new(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// The answer as `T`, or the server's problem document as a [`CliError::Refused`].
    async fn send<T: DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> Result<T, CliError> {
        let url = self.base.clone();
        let response = r
            .send()
            .await
            .map_err(|source| CliError::Unreachable { url, source })?;
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body)
                .map_err(|e| CliError::Unreadable(format!("{status} answer: {e}")));
        }
        Err(refusal(status, &body))
    }

    /// Creates a campaign from a template folder (`subject.hbs`, `html.hbs`, optional `text.hbs`,
    /// sent inline) and a list file (CSV, or NDJSON for `.ndjson`/`.jsonl`) of any length: as a
    /// draft, its list streamed into it (`PUT …/recipients`, showing bytes sent and rows stored on
    /// stderr), then started. A retry of the creation cannot make a second campaign: it carries an
    /// `Idempotency-Key`.
    pub async fn create(
        &self,
        template: &Path,
        recipients: &Path,
        from: &str,
        name: Option<&str>,
        per_minute: Option<u32>,
    ) -> Result<Campaign, CliError> {
        let read = |f: &str| std::fs::read_to_string(template.join(f));
        let usage = |what: String| CliError::Usage(what);
        let subject = read("subject.hbs")
            .map_err(|e| usage(format!("{}/subject.hbs: {e}", template.display())))?;
        let html =
            read("html.hbs").map_err(|e| usage(format!("{}/html.hbs: {e}", template.display())))?;
        let text = read("text.hbs").ok();
        let file = tokio::fs::File::open(recipients)
            .await
            .map_err(|e| usage(format!("{}: {e}", recipients.display())))?;
        let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let name = name.map(str::to_string).unwrap_or_else(|| {
            template
                .file_name()
                .map_or("campaign".into(), |n| n.to_string_lossy().into_owned())
        });
        let mut campaign = json!({
            "name": name, "from": from, "subject": subject.trim_end(), "html": html, "text": text,
            "draft": true,
        });
        if let Some(cap) = per_minute {
            campaign["per_minute"] = cap.into();
        }
        let draft: Campaign = self
            .send(
                self.request(reqwest::Method::POST, "/v1/campaigns")
                    .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                    .json(&campaign),
            )
            .await?;
        let id = draft.id;
        let media = match recipients.extension().and_then(|e| e.to_str()) {
            Some("ndjson" | "jsonl") => "application/x-ndjson",
            _ => "text/csv",
        };
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let body = reqwest::Body::wrap_stream(file_chunks(file, sent.clone()));
        let upload = self.send::<Campaign>(
            self.request(
                reqwest::Method::PUT,
                &format!("/v1/campaigns/{id}/recipients"),
            )
            .header("content-type", media)
            .body(body),
        );
        let mut upload = std::pin::pin!(upload);
        let mut shown = UploadProgress::new(size);
        let listed = loop {
            tokio::select! {
                done = &mut upload => match done {
                    Ok(listed) => break listed,
                    Err(e) => {
                        // The draft keeps no part of a refused list; cancelled, it can never send.
                        let _ = self.act::<Value>(&id, "cancel").await;
                        return Err(e);
                    }
                },
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                    let rows = self
                        .send::<Campaign>(self.request(reqwest::Method::GET, &format!("/v1/campaigns/{id}")))
                        .await
                        .ok()
                        .map(|c| c.counts.total.max(0) as u64);
                    shown.update(sent.load(std::sync::atomic::Ordering::Relaxed), rows);
                }
            }
        };
        shown.done(
            sent.load(std::sync::atomic::Ordering::Relaxed),
            Some(listed.counts.total.max(0) as u64),
        );
        self.act(&id, "start").await
    }

    pub async fn list(&self) -> Result<Vec<Campaign>, CliError> {
        let list: crate::http::payloads::CampaignList = self
            .send(self.request(reqwest::Method::GET, "/v1/campaigns"))
            .await?;
        Ok(list.campaigns)
    }

    /// The campaign as the server shows it (with its forecast while running), to print as it is.
    pub async fn show(&self, id: &str) -> Result<Value, CliError> {
        self.send(self.request(reqwest::Method::GET, &format!("/v1/campaigns/{id}")))
            .await
    }

    /// `pause`, `resume`, `cancel` or `start`: the campaign after it, as `T`.
    pub async fn act<T: DeserializeOwned>(&self, id: &str, action: &str) -> Result<T, CliError> {
        self.send(self.request(
            reqwest::Method::POST,
            &format!("/v1/campaigns/{id}/{action}"),
        ))
        .await
    }

    /// Follows the campaign's event stream until it ends (completed, cancelled, paused), calling
    /// `frame` with each progress frame; reconnects with `Last-Event-ID` if the stream drops.
    pub async fn watch(
        &self,
        id: &str,
        mut frame: impl FnMut(&Snapshot),
    ) -> Result<Ending, CliError> {
        let path = format!("/v1/campaigns/{id}/events");
        let mut last: Option<String> = None;
        let mut drops = 0;
        loop {
            let mut r = self.request(reqwest::Method::GET, &path);
            if let Some(l) = &last {
                r = r.header("Last-Event-ID", l);
            }
            let url = self.base.clone();
            let mut response = r
                .send()
                .await
                .map_err(|source| CliError::Unreachable { url, source })?;
            if !response.status().is_success() {
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap_or_default();
                return Err(refusal(status, &body));
            }
            let mut parser = SseParser::default();
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) | Err(_) => break,
                };
                for e in parser.push(&String::from_utf8_lossy(&chunk)) {
                    if e.id.is_some() {
                        last = e.id.clone();
                    }
                    if e.event != "progress" {
                        continue;
                    }
                    let Ok(v) = serde_json::from_str::<Snapshot>(&e.data) else {
                        continue;
                    };
                    frame(&v);
                    if let Some(end) = Ending::of(&v) {
                        return Ok(end);
                    }
                }
            }
            drops += 1;
            if drops > 20 {
                return Err(CliError::StreamEnded(self.base.clone()));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Server-sent events from a byte stream that arrives in arbitrary pieces. Pure.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
}

impl SseParser {
    pub fn push(&mut self, text: &str) -> Vec<SseEvent> {
        self.buf.push_str(&text.replace("\r\n", "\n"));
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut e = SseEvent {
                event: "message".into(),
                ..Default::default()
            };
            let mut any = false;
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => e.id = Some(value.to_string()),
                    "event" => e.event = value.to_string(),
                    "data" => {
                        if any {
                            e.data.push('\n');
                        }
                        e.data.push_str(value);
                        any = true;
                    }
                    // Comments (keep-alives) and unknown fields.
                    _ => {}
                }
            }
            if any {
                out.push(e);
            }
        }
        out
    }
}

/// The server's problem document (RFC 9457) as a refusal, its field errors one per line.
fn refusal(status: u16, body: &[u8]) -> CliError {
    #[derive(Default, serde::Deserialize)]
    #[serde(default)]
    struct ProblemBody {
        title: Option<String>,
        detail: String,
        errors: Vec<crate::domain::validate::FieldError>,
    }
    let p: ProblemBody = serde_json::from_slice(body).unwrap_or_default();
    let mut detail = p.detail;
    for e in &p.errors {
        detail.push_str(&format!("\n  {}: {}", e.field, e.message));
    }
    CliError::Refused {
        status,
        title: p.title.unwrap_or_else(|| "refused".into()),
        detail,
    }
}

/// One line about a campaign, for `list`.
pub fn line(c: &Campaign) -> String {
    let k = &c.counts;
    format!(
        "{}  {:<10} {:>8} sent {:>6} failed {:>6} unknown {:>8} total  {}",
        c.id,
        c.status.as_str(),
        k.sent,
        k.failed,
        k.unknown,
        k.total,
        c.name
    )
}

/// One line about a progress frame, for `watch` when its output is not a terminal (a log, a CI job):
/// what the bars would show, in words.
pub fn progress_line(f: &Snapshot) -> String {
    let k = &f.counts;
    let this_minute = f
        .minute
        .map(|m| format!("  this minute {}/{}", m.used, m.cap))
        .unwrap_or_default();
    let eta = f
        .eta
        .as_deref()
        .map(|e| format!("  ETA {e}"))
        .unwrap_or_default();
    format!(
        "{} {}  rendered {}/{}  sent {}  failed {}  unknown {}  {}/min{this_minute}{eta}",
        f.at,
        f.status.as_str(),
        k.rendered,
        k.total,
        k.sent,
        k.failed,
        k.unknown,
        f.rate_per_minute,
    )
}

/// A file's bytes, 256 KiB at a time, counted into `sent` as they go.
fn file_chunks(
    file: tokio::fs::File,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> {
    futures::stream::unfold(file, move |mut file| {
        let sent = sent.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    sent.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    Some((Ok(buf), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        }
    })
}

/// An upload's progress on stderr: a bar on a terminal, a line every few seconds elsewhere.
struct UploadProgress {
    bar: Option<indicatif::ProgressBar>,
    size: u64,
    last_line: std::time::Instant,
}

impl UploadProgress {
    fn new(size: u64) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "uploading [{bar:30}] {bytes}/{total_bytes} {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            size,
            last_line: std::time::Instant::now(),
        }
    }

    fn update(&mut self, sent: u64, rows: Option<u64>) {
        let rows = rows.map(|r| format!("{r} rows stored")).unwrap_or_default();
        match &self.bar {
            Some(bar) => {
                bar.set_position(sent);
                bar.set_message(rows);
            }
            None if self.last_line.elapsed() >= std::time::Duration::from_secs(5) => {
                self.last_line = std::time::Instant::now();
                eprintln!("uploading: {}, {rows}", upload_line(sent, self.size));
            }
            None => {}
        }
    }

    fn done(self, sent: u64, rows: Option<u64>) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "uploaded {}: {} rows stored",
            upload_line(sent, self.size),
            rows.unwrap_or(0)
        );
    }
}

/// `12.5 of 40.0 MB (31 %)`.
pub fn upload_line(sent: u64, size: u64) -> String {
    let mb = |b: u64| b as f64 / 1_000_000.0;
    if size == 0 {
        return format!("{:.1} MB", mb(sent));
    }
    format!(
        "{:.1} of {:.1} MB ({} %)",
        mb(sent),
        mb(size),
        sent.saturating_mul(100) / size
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_lines_say_how_far_an_upload_is() {
        assert_eq!(
            upload_line(12_500_000, 40_000_000),
            "12.5 of 40.0 MB (31 %)"
        );
        assert_eq!(upload_line(0, 0), "0.0 MB");
        assert_eq!(upload_line(3, 3), "0.0 of 0.0 MB (100 %)");
    }

    #[test]
    fn a_progress_frame_reads_as_one_line() {
        let f: Snapshot = serde_json::from_value(json!({
            "at": "2026-12-01T10:00:05.000Z", "status": "running",
            "counts": {"total": 300, "rendered": 300, "sent": 120, "failed": 2, "unknown": 1},
            "minute": {"used": 123, "cap": 600}, "rate_per_minute": 590,
            "eta": "2026-12-01T10:00:25.000Z",
        }))
        .unwrap();
        assert_eq!(
            progress_line(&f),
            "2026-12-01T10:00:05.000Z running  rendered 300/300  sent 120  failed 2  unknown 1  \
             590/min  this minute 123/600  ETA 2026-12-01T10:00:25.000Z"
        );
        let quiet: Snapshot = serde_json::from_value(
            json!({"at": "t", "status": "paused", "counts": {"total": 3}, "minute": null, "eta": null}),
        )
        .unwrap();
        assert_eq!(
            progress_line(&quiet),
            "t paused  rendered 0/3  sent 0  failed 0  unknown 0  0/min"
        );
    }

    #[test]
    fn events_are_read_across_arbitrary_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(": keep-alive\n\nid: 7\nevent: prog").is_empty());
        let got = p.push("ress\ndata: {\"a\":1}\n\nid: 8\r\ndata: x\r\ndata: y\r\n\r\n");
        assert_eq!(
            got,
            vec![
                SseEvent {
                    id: Some("7".into()),
                    event: "progress".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: Some("8".into()),
                    event: "message".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn endings_map_to_exit_statuses() {
        let f = |status: &str, failed: i64| -> Snapshot {
            serde_json::from_value(json!({"status": status, "counts": {"failed": failed}})).unwrap()
        };
        assert_eq!(Ending::of(&f("completed", 0)), Some(Ending::Sent));
        assert_eq!(Ending::of(&f("completed", 2)), Some(Ending::Incomplete));
        assert_eq!(Ending::of(&f("paused", 0)), Some(Ending::Paused));
        assert_eq!(Ending::of(&f("cancelled", 0)), Some(Ending::Cancelled));
        assert_eq!(Ending::of(&f("running", 0)), None);
    }
}
