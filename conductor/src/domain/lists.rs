//! Recipient lists read as they arrive: CSV (a header row, then one recipient per line) and NDJSON
//! (one `{email, name?, data?}` object per line), each an iterator of [`Row`]s over any `Read`, so a
//! list of any length is never held whole. A problem names the line a user sees in their file,
//! counting every line (blank ones too), as they count them.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::rc::Rc;

use crate::domain::validate::{
    Invalid, RecipientIn, Row, MAX_COLUMNS, MAX_FIELD_BYTES, MAX_ROW_BYTES,
};

/// The bytes a CSV reader has taken but whose lines are not yet counted: the reader reads ahead of
/// the record it returns, so its records' line numbers are counted here from their byte positions.
/// What is kept is at most the reader's buffer and one record.
#[derive(Default)]
struct Lines {
    /// Offset in the input of `pending[0]`.
    base: u64,
    pending: Vec<u8>,
    newlines: usize,
}

impl Lines {
    /// The line (1-based) of a record that starts at byte `pos`, which is where the reader began
    /// looking for it — before any blank lines it skipped.
    fn line_at(&mut self, pos: u64) -> usize {
        let mut end = (pos.saturating_sub(self.base) as usize).min(self.pending.len());
        while end < self.pending.len() && matches!(self.pending[end], b'\r' | b'\n') {
            end += 1;
        }
        self.newlines += self.pending[..end].iter().filter(|&&b| b == b'\n').count();
        self.pending.drain(..end);
        self.base += end as u64;
        self.newlines + 1
    }
}

struct Tracked<R> {
    inner: R,
    lines: Rc<RefCell<Lines>>,
}

/// Bytes the CSV reader may take past the start of the record it is on: the longest row, and its
/// read-ahead. Past it the record is refused before the reader buffers any more of it, so one
/// endless line cannot grow the process.
const MAX_PENDING: usize = MAX_ROW_BYTES + 64 * 1024;

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut lines = self.lines.borrow_mut();
        lines.pending.extend_from_slice(&buf[..n]);
        if lines.pending.len() > MAX_PENDING {
            // Every line ended in what is held comes before the endless one.
            let line = lines.newlines + 1 + lines.pending.iter().filter(|&&b| b == b'\n').count();
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("recipients CSV line {line}: the row is over {MAX_ROW_BYTES} bytes"),
            ));
        }
        Ok(n)
    }
}

/// Skips a UTF-8 byte-order mark at the start of the input.
struct NoBom<R> {
    inner: R,
    checked: bool,
}

impl<R: Read> Read for NoBom<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.checked {
            return self.inner.read(buf);
        }
        self.checked = true;
        let mut head = [0u8; 3];
        let mut got = 0;
        while got < 3 {
            match self.inner.read(&mut head[got..])? {
                0 => break,
                n => got += n,
            }
        }
        let keep: &[u8] = if head[..got] == *b"\xEF\xBB\xBF" {
            &[]
        } else {
            &head[..got]
        };
        if keep.len() > buf.len() {
            // A caller's buffer under three bytes: not one the CSV reader uses.
            return Err(std::io::Error::other("read buffer too small"));
        }
        buf[..keep.len()].copy_from_slice(keep);
        if keep.is_empty() {
            return self.inner.read(buf);
        }
        Ok(keep.len())
    }
}

/// The rows of a recipients CSV.
pub struct CsvRows<R: Read> {
    reader: csv::Reader<Tracked<NoBom<R>>>,
    lines: Rc<RefCell<Lines>>,
    headers: Vec<String>,
    /// Where each data column's cell goes (a dotted header nests).
    columns: crate::domain::columns::Columns,
    email_col: usize,
    name_col: Option<usize>,
    record: csv::StringRecord,
    done: bool,
}

impl<R: Read> CsvRows<R> {
    /// Reads and checks the header row.
    pub fn new(input: R) -> Result<Self, Invalid> {
        let lines = Rc::new(RefCell::new(Lines::default()));
        let mut reader = csv::ReaderBuilder::new()
            .flexible(false)
            .trim(csv::Trim::All)
            .from_reader(Tracked {
                inner: NoBom {
                    inner: input,
                    checked: false,
                },
                lines: lines.clone(),
            });
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| Invalid::Csv(format!("recipients CSV header: {e}")))?
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if headers.len() > MAX_COLUMNS {
            return Err(Invalid::Csv(format!(
                "recipients CSV header has {} columns; at most {MAX_COLUMNS} are taken",
                headers.len()
            )));
        }
        if let Some(i) = headers.iter().position(|h| h.len() > 128) {
            return Err(Invalid::Csv(format!(
                "recipients CSV header: column {} has a name over 128 bytes",
                i + 1
            )));
        }
        let col = |name: &str| headers.iter().position(|h| h == name);
        let email_col = col("email").ok_or_else(|| {
            Invalid::Csv(format!(
                "recipients CSV has no `email` column (header is: {})",
                headers.join(", ")
            ))
        })?;
        let name_col = col("name");
        let mut seen = HashSet::new();
        for h in &headers {
            if h.is_empty() {
                return Err(Invalid::Csv(
                    "recipients CSV header has an empty column name".into(),
                ));
            }
            if !seen.insert(h) {
                return Err(Invalid::Csv(format!(
                    "recipients CSV header names `{h}` twice"
                )));
            }
        }
        let skip: Vec<usize> = std::iter::once(email_col).chain(name_col).collect();
        let columns = crate::domain::columns::Columns::new(&headers, &skip)
            .map_err(|e| Invalid::Csv(format!("recipients CSV header: {e}")))?;
        Ok(Self {
            reader,
            lines,
            headers,
            columns,
            email_col,
            name_col,
            record: csv::StringRecord::new(),
            done: false,
        })
    }

    fn line_of(&self, pos: Option<&csv::Position>) -> usize {
        self.lines
            .borrow_mut()
            .line_at(pos.map_or(0, csv::Position::byte))
    }

    fn next_row(&mut self) -> Result<Option<Row>, Invalid> {
        loop {
            let more = self
                .reader
                .read_record(&mut self.record)
                .map_err(|e| match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        pos,
                        expected_len,
                        len,
                    } => Invalid::Csv(format!(
                        "recipients CSV line {}: {len} fields where the header has {expected_len}",
                        self.line_of(pos.as_ref())
                    )),
                    // A row refused by [`Tracked`] carries its own words.
                    csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                        Invalid::Csv(io.to_string())
                    }
                    _ => Invalid::Csv(format!("recipients CSV: {e}")),
                })?;
            if !more {
                return Ok(None);
            }
            let line = self.line_of(self.record.position());
            let record = &self.record;
            if record.iter().all(str::is_empty) {
                continue;
            }
            if let Some(i) = record.iter().position(|f| f.len() > MAX_FIELD_BYTES) {
                return Err(Invalid::Csv(format!(
                    "recipients CSV line {line}: field `{}` is over {MAX_FIELD_BYTES} bytes",
                    self.headers[i]
                )));
            }
            if record.as_slice().len() > MAX_ROW_BYTES {
                return Err(Invalid::Csv(format!(
                    "recipients CSV line {line}: the row is over {MAX_ROW_BYTES} bytes"
                )));
            }
            let data = self.columns.data(record);
            return Ok(Some(Row {
                at: format!("line {line}"),
                recipient: RecipientIn {
                    email: record[self.email_col].to_string(),
                    name: self
                        .name_col
                        .map(|c| record[c].to_string())
                        .filter(|n| !n.is_empty()),
                    data: Some(data),
                },
            }));
        }
    }
}

impl<R: Read> Iterator for CsvRows<R> {
    type Item = Result<Row, Invalid>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_row();
        step(&mut self.done, next)
    }
}

/// A reader's next row as an iterator item; after the end or an error (from which the reader's
/// position means nothing) there are no more.
fn step(done: &mut bool, next: Result<Option<Row>, Invalid>) -> Option<Result<Row, Invalid>> {
    let next = next.transpose();
    if !matches!(next, Some(Ok(_))) {
        *done = true;
    }
    next
}

/// A whole CSV in memory, parsed.
pub fn parse_csv(bytes: &[u8]) -> Result<Vec<Row>, Invalid> {
    CsvRows::new(bytes)?.collect()
}

/// The rows of an NDJSON list: one JSON object per line, blank lines skipped.
pub struct NdjsonRows<R: Read> {
    input: BufReader<R>,
    line: usize,
    buf: Vec<u8>,
    done: bool,
}

impl<R: Read> NdjsonRows<R> {
    pub fn new(input: R) -> Self {
        Self {
            input: BufReader::with_capacity(64 * 1024, input),
            line: 0,
            buf: Vec::new(),
            done: false,
        }
    }

    fn next_row(&mut self) -> Result<Option<Row>, Invalid> {
        loop {
            self.buf.clear();
            self.line += 1;
            let line = self.line;
            // A line is read at most one byte past the row limit, however long it really is.
            let limit = (MAX_ROW_BYTES + 1) as u64;
            let n = (&mut self.input)
                .take(limit)
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Invalid::Csv(format!("recipients NDJSON line {line}: {e}")))?;
            if n == 0 {
                return Ok(None);
            }
            if self.buf.len() as u64 == limit && self.buf.last() != Some(&b'\n') {
                return Err(Invalid::Csv(format!(
                    "recipients NDJSON line {line}: the row is over {MAX_ROW_BYTES} bytes"
                )));
            }
            let text = if line == 1 {
                self.buf.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&self.buf)
            } else {
                &self.buf[..]
            };
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let recipient: RecipientIn =
                serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(text))
                    .map_err(|e| {
                    let path = e.path().to_string();
                    let at = if path == "." {
                        String::new()
                    } else {
                        format!(" at `{path}`")
                    };
                    Invalid::Csv(format!(
                        "recipients NDJSON line {line}{at}: {}",
                        e.into_inner()
                    ))
                })?;
            return Ok(Some(Row {
                at: format!("line {line}"),
                recipient,
            }));
        }
    }
}

impl<R: Read> Iterator for NdjsonRows<R> {
    type Item = Result<Row, Invalid>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_row();
        step(&mut self.done, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its input a few bytes per read, as a network body does.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn lines_of(rows: impl Iterator<Item = Result<Row, Invalid>>) -> Vec<(String, String)> {
        rows.map(|r| {
            let r = r.unwrap();
            (r.at, r.recipient.email)
        })
        .collect()
    }

    #[test]
    fn csv_lines_count_blank_lines_quoted_newlines_and_crlf() {
        let data = "\u{feff}email,name\n\na@x.org,A\n\n\nb@x.org,\"multi\nline\"\nc@x.org,C\r\n\r\nd@x.org,D\n";
        for step in [1, 2, 3, 7, 4096] {
            let rows = CsvRows::new(Trickle(data.as_bytes(), step)).unwrap();
            assert_eq!(
                lines_of(rows),
                [
                    ("line 3".to_string(), "a@x.org".to_string()),
                    ("line 6".into(), "b@x.org".into()),
                    ("line 8".into(), "c@x.org".into()),
                    ("line 10".into(), "d@x.org".into()),
                ],
                "{step} bytes per read"
            );
        }
    }

    #[test]
    fn a_bad_csv_row_deep_in_a_stream_names_its_line() {
        let mut data = String::from("email,city\n");
        for i in 0..50_000 {
            data.push_str(&format!("r{i}@x.org,Köln\n"));
        }
        data.push_str("late@x.org,Köln,extra\n");
        let mut rows = CsvRows::new(Trickle(data.as_bytes(), 1000)).unwrap();
        assert_eq!(
            rows.by_ref().take(50_000).filter(Result::is_ok).count(),
            50_000
        );
        let err = rows.next().unwrap().unwrap_err().to_string();
        assert_eq!(
            err,
            "recipients CSV line 50002: 3 fields where the header has 2"
        );
        assert!(rows.next().is_none(), "nothing after an error");
    }

    #[test]
    fn an_endless_csv_line_is_refused_without_being_held() {
        let mut data = String::from("email,city\na@x.org,Köln\n\nb@x.org,");
        data.push_str(&"x".repeat(4 * MAX_PENDING));
        let mut rows = CsvRows::new(Trickle(data.as_bytes(), 8192)).unwrap();
        assert!(rows.next().unwrap().is_ok());
        let err = rows.next().unwrap().unwrap_err().to_string();
        assert_eq!(err, "recipients CSV line 4: the row is over 65536 bytes");
        let endless_header = "e".repeat(4 * MAX_PENDING);
        let err = CsvRows::new(endless_header.as_bytes())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("line 1: the row is over"), "{err}");
    }

    #[test]
    fn ndjson_rows_name_their_line_and_field() {
        let data = "{\"email\":\"a@x.org\",\"name\":\"A\"}\n\n  \n{\"email\":\"b@x.org\",\"data\":{\"city\":\"Köln\"}}\r\n{\"email\":\"c@x.org\",\"nmae\":1}\n";
        let mut rows = NdjsonRows::new(Trickle(data.as_bytes(), 5));
        let a = rows.next().unwrap().unwrap();
        assert_eq!(
            (a.at.as_str(), a.recipient.name.as_deref()),
            ("line 1", Some("A"))
        );
        let b = rows.next().unwrap().unwrap();
        assert_eq!(b.at, "line 4");
        assert_eq!(b.recipient.data.unwrap()["city"], "Köln");
        let err = rows.next().unwrap().unwrap_err().to_string();
        assert!(
            err.starts_with("recipients NDJSON line 5") && err.contains("nmae"),
            "{err}"
        );
        assert!(rows.next().is_none());
        let long = format!("{{\"email\":\"{}@x.org\"}}\n", "a".repeat(MAX_ROW_BYTES));
        let err = NdjsonRows::new(long.as_bytes())
            .next()
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("over 65536 bytes"), "{err}");
        assert!(NdjsonRows::new(&b"[1]\n"[..]).next().unwrap().is_err());
    }

    #[test]
    fn a_bad_row_late_in_a_long_list_names_its_own_line() {
        let mut csv = String::from("email,city\n");
        for i in 0..30_000 {
            if i % 1000 == 0 {
                csv.push('\n'); // blank lines count as lines of the file
            }
            csv.push_str(&format!("r{i}@example.com,Köln\n"));
        }
        csv.push_str("late@example.com,Köln,extra\n");
        let lines = csv.lines().count();
        match parse_csv(csv.as_bytes()) {
            Err(Invalid::Csv(e)) => assert!(e.contains(&format!("line {lines}:")), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn csv_rows_columns_and_errors() {
        let rows = parse_csv(
            "\u{feff}Email,Name,city\nzoe@example.org,Zoë,Köln\n\nx@example.org,,Paris\n"
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].at, "line 2");
        assert_eq!(rows[0].recipient.name.as_deref(), Some("Zoë"));
        assert_eq!(rows[0].recipient.data.as_ref().unwrap()["city"], "Köln");
        assert_eq!(rows[1].at, "line 4");
        assert_eq!(rows[1].recipient.name, None);

        let err = parse_csv(b"name,city\nA,B\n").unwrap_err();
        assert!(err.to_string().contains("no `email` column"), "{err}");
        let err = parse_csv(b"email,name\na@example.com,A\nb@example.com,B,extra\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "recipients CSV line 3: 3 fields where the header has 2"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Any bytes are recipients or a clear error; each row names its line.
        #[test]
        fn any_csv_parses_or_says_why(raw in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(rows) = parse_csv(&raw) {
                for r in rows {
                    prop_assert!(r.at.starts_with("line "));
                }
            }
        }

        #[test]
        fn csv_shaped_text_parses_or_says_why(
            text in "(email|name|city|Email)(,(email|name|city|x)){0,3}\n([a-z@.,\"\r\n ]{0,30}\n){0,10}"
        ) {
            let _ = parse_csv(text.as_bytes());
        }
    }
}
