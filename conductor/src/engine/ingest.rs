//! A recipient list streamed into a campaign. The body's bytes go through a bounded channel to a
//! parser on a blocking thread, which checks and trial-renders the rows a chunk at a time and hands
//! the valid chunks back through another bounded channel to be stored, each in a short transaction
//! of its own. Memory stays at a few chunks whatever the list's length, and the async threads only
//! move bytes. Any problem stops the import; the caller then abandons it, so nothing half-made is
//! left (see `Service::fill` in the HTTP layer).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use renderer::RecipientData;
use sender::Clock;
use tokio::sync::mpsc;

use crate::domain::lists::{CsvRows, NdjsonRows};
use crate::domain::validate::{Invalid, Row, RowCheck, RowRules};
use crate::store::Store;

/// Rows checked and stored together: one transaction each.
pub const CHUNK_ROWS: usize = 10_000;

/// How often an upload that is slow to send its next chunk says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// How long an upload may send nothing at all before it counts as cut off.
const IDLE: Duration = Duration::from_millis(crate::store::IMPORT_SILENCE_MS as u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    Csv,
    Ndjson,
}

impl ListFormat {
    /// The format a part's or body's media type names; CSV when it names none.
    pub fn of_media_type(content_type: &str) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "" | "text/csv" | "application/csv" | "application/octet-stream" | "text/plain" => {
                Some(Self::Csv)
            }
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Some(Self::Ndjson)
            }
            _ => None,
        }
    }
}

/// A list as the parser gets it.
pub enum Source {
    /// A body's bytes as they arrive (see [`forward`]).
    Stream(ListFormat, mpsc::Receiver<std::io::Result<Bytes>>),
    /// A small list already parsed (inline JSON).
    Rows(Vec<Row>),
}

/// The bytes of a [`Source::Stream`] as a blocking reader.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Why a body stopped before its end.
#[derive(Debug)]
pub enum Cut {
    TooLarge(u64),
    Broken(String),
}

/// Why an import stopped; nothing of it is kept (the caller abandons it).
#[derive(Debug)]
pub enum ImportError {
    /// A row, or the list as a whole, is not valid.
    Invalid(Invalid),
    Store(crate::store::StoreError),
    /// The list's parser thread died.
    Parser,
}

impl From<Invalid> for ImportError {
    fn from(e: Invalid) -> Self {
        Self::Invalid(e)
    }
}

impl From<crate::store::StoreError> for ImportError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(e)
    }
}

/// Moves a body's bytes to the parser, at most `limit` of them. Once the parser has stopped (a bad
/// row), the rest is read and dropped, so that the client, still sending, gets the answer.
pub async fn forward<S>(
    body: S,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    limit: u64,
) -> Result<u64, Cut>
where
    S: Stream<Item = Result<Bytes, Cut>>,
{
    let mut body = std::pin::pin!(body);
    let mut total = 0u64;
    let mut listening = true;
    loop {
        // A client that stops sending without closing is cut off, not waited for.
        let next = match tokio::time::timeout(IDLE, body.next()).await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(_) => Err(Cut::Broken(format!(
                "no bytes arrived for {} s",
                IDLE.as_secs()
            ))),
        };
        let bytes = match next {
            Ok(b) => b,
            Err(cut) => {
                let _ = tx
                    .send(Err(std::io::Error::other("the upload was cut off")))
                    .await;
                return Err(cut);
            }
        };
        total += bytes.len() as u64;
        if total > limit {
            let _ = tx
                .send(Err(std::io::Error::other("over the upload limit")))
                .await;
            return Err(Cut::TooLarge(limit));
        }
        if listening && tx.send(Ok(bytes)).await.is_err() {
            listening = false;
        }
    }
    Ok(total)
}

/// What an import stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    pub rows: u64,
    pub duplicates: u64,
    pub warnings: Vec<String>,
}

/// Checks and stores `source` into campaign `id`, which must be importing. On an error the caller
/// abandons the import.
pub async fn import(
    store: &Arc<dyn Store>,
    clock: &Arc<dyn Clock>,
    id: &str,
    rules: Arc<RowRules>,
    source: Source,
) -> Result<Imported, ImportError> {
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Vec<RecipientData>>(2);
    let parser = tokio::task::spawn_blocking(move || parse(&rules, source, chunks_tx));
    let mut duplicates = 0;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let stored: Result<(), ImportError> = loop {
        tokio::select! {
            chunk = chunks_rx.recv() => {
                let Some(chunk) = chunk else { break Ok(()) };
                match store.import_chunk(id, &chunk, clock.now_ms()).await {
                    Ok(d) => duplicates += d,
                    Err(e) => break Err(e.into()),
                }
            }
            _ = heartbeat.tick() => {
                if let Err(e) = store.touch_import(id, clock.now_ms()).await {
                    break Err(e.into());
                }
            }
        }
    };
    // Dropping the receiver stops a parser still running (the store failed).
    drop(chunks_rx);
    let parsed = parser.await.map_err(|e| {
        tracing::error!(error = %e, "list parser failed");
        ImportError::Parser
    })?;
    stored?;
    let (rows, warnings) = parsed?;
    Ok(Imported {
        rows: rows - duplicates,
        duplicates,
        warnings,
    })
}

/// Row `n` (1 the first) of a streamed list, for a preview: the list is read up to it, on a
/// blocking thread, and no further (the rest of the body is drained by [`forward`]). A row before
/// it that cannot be read is the answer instead, as creating the campaign would give it.
pub async fn nth_row(
    format: ListFormat,
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    n: u64,
) -> Result<Row, ImportError> {
    let find = move || -> Result<Row, Invalid> {
        let reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        let rows: Box<dyn Iterator<Item = Result<Row, Invalid>>> = match format {
            ListFormat::Csv => Box::new(CsvRows::new(reader)?),
            ListFormat::Ndjson => Box::new(NdjsonRows::new(reader)),
        };
        let mut seen = 0u64;
        for row in rows {
            let row = row?;
            seen += 1;
            if seen == n {
                return Ok(row);
            }
        }
        Err(Invalid::Fields(vec![crate::domain::validate::field(
            "row",
            format!("the list has {seen} recipients: there is no row {n}"),
        )]))
    };
    tokio::task::spawn_blocking(find)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "list parser failed");
            ImportError::Parser
        })?
        .map_err(ImportError::Invalid)
}

/// The parser's side: rows checked a chunk at a time, valid chunks sent on. Returns how many rows
/// were given ids, and the warnings.
fn parse(
    rules: &RowRules,
    source: Source,
    chunks: mpsc::Sender<Vec<RecipientData>>,
) -> Result<(u64, Vec<String>), Invalid> {
    let rows: Box<dyn Iterator<Item = Result<Row, Invalid>>> = match source {
        Source::Rows(rows) => Box::new(rows.into_iter().map(Ok)),
        Source::Stream(format, rx) => {
            let reader = ChannelReader {
                rx,
                current: Bytes::new(),
            };
            match format {
                ListFormat::Csv => Box::new(CsvRows::new(reader)?),
                ListFormat::Ndjson => Box::new(NdjsonRows::new(reader)),
            }
        }
    };
    let mut check = RowCheck::new(rules);
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    let send = |check: &mut RowCheck, chunk: Vec<Row>| {
        let valid = check.check(chunk);
        // A closed channel: the store failed, and the import says so.
        !valid.is_empty() && chunks.blocking_send(valid).is_err()
    };
    for row in rows {
        match row {
            Ok(row) => chunk.push(row),
            // A row that cannot be read ends the list; problems found before it come first.
            Err(e) if !check.failed() => return Err(e),
            Err(_) => break,
        }
        if chunk.len() == CHUNK_ROWS {
            if send(
                &mut check,
                std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS)),
            ) {
                return Ok((0, Vec::new()));
            }
            // The first chunk with a problem ends the list: its problems are the answer, and the
            // rest of a long list is not checked only to be refused.
            if check.failed() {
                break;
            }
        }
    }
    if !chunk.is_empty() && send(&mut check, chunk) {
        return Ok((0, Vec::new()));
    }
    let rows = check.rows() as u64;
    check.finish().map(|w| (rows, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_name_their_format() {
        assert_eq!(ListFormat::of_media_type(""), Some(ListFormat::Csv));
        assert_eq!(
            ListFormat::of_media_type("text/csv; charset=utf-8"),
            Some(ListFormat::Csv)
        );
        assert_eq!(
            ListFormat::of_media_type("Application/X-NDJSON"),
            Some(ListFormat::Ndjson)
        );
        assert_eq!(ListFormat::of_media_type("image/png"), None);
    }

    #[tokio::test]
    async fn a_body_is_forwarded_within_its_limit_and_drained_once_the_parser_stops() {
        let (tx, mut rx) = mpsc::channel(8);
        let again = || {
            vec![
                Ok(Bytes::from("ab")),
                Ok(Bytes::from("cd")),
                Ok(Bytes::from("ef")),
            ]
        };
        let total = forward(futures::stream::iter(again()), tx, 6)
            .await
            .unwrap();
        assert_eq!(total, 6);
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            got.extend_from_slice(&b.unwrap());
        }
        assert_eq!(got, b"abcdef");

        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        assert_eq!(
            forward(futures::stream::iter(again()), tx, 6)
                .await
                .unwrap(),
            6,
            "read to the end though nobody listens"
        );

        let (tx, mut rx) = mpsc::channel(8);
        let cut = forward(futures::stream::iter(again()), tx, 5).await;
        assert!(matches!(cut, Err(Cut::TooLarge(5))));
        let mut last = None;
        while let Some(b) = rx.recv().await {
            last = Some(b);
        }
        assert!(
            last.unwrap().is_err(),
            "the parser is told the list is not whole"
        );

        let (tx, mut rx) = mpsc::channel(8);
        let broken: Vec<Result<Bytes, Cut>> =
            vec![Ok("ab".into()), Err(Cut::Broken("reset".into()))];
        assert!(matches!(
            forward(futures::stream::iter(broken), tx, 100).await,
            Err(Cut::Broken(why)) if why == "reset"
        ));
        assert!(rx.recv().await.unwrap().is_ok());
        assert!(rx.recv().await.unwrap().is_err());
    }
}
