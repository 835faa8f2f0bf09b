//! Two costs that grew with the campaign or dominated the send path, measured side by side in one
//! run (loopback-free, bounded, stops by itself):
//! - the recipients CSV reader at 50k, 100k and 200k rows: time per row should stay flat;
//! - decoding one rendered batch of 1,000 messages, as a sender does per lease: whole-buffer
//!   decompression (what `RenderedBatch::decode` does) against `serde_json::from_reader` over the
//!   zstd stream (what it did before), alternating ABBA.
//!
//! `cargo bench -p conductor --bench ingest_parse`

use std::time::{Duration, Instant};

use renderer::{Mailbox, RenderedBatch, RenderedMessage};

fn csv(rows: usize) -> Vec<u8> {
    let mut s = String::from("email,name,city,plan\n");
    for i in 0..rows {
        s.push_str(&format!("r{i}@example.com,Zoë {i},Köln,gold\n"));
    }
    s.into_bytes()
}

fn batch() -> Vec<u8> {
    let html = format!(
        "<html><body>{}</body></html>",
        "<p>Hello, this is the newsletter.</p>".repeat(200)
    );
    let b = RenderedBatch {
        version: renderer::batch::FORMAT_VERSION,
        campaign_id: "c".into(),
        batch: 0,
        from: Mailbox {
            name: Some("News".into()),
            email: "news@example.com".into(),
        },
        reply_to: None,
        headers: Default::default(),
        messages: (0..1000)
            .map(|i| RenderedMessage {
                recipient_id: i,
                to: format!("r{i}@example.com"),
                to_name: None,
                subject: format!("Hi {i}"),
                html: html.replace("Hello", &format!("Hello {i}")),
                text: "Hello".repeat(100),
                list_unsubscribe: None,
            })
            .collect(),
    };
    b.encode().unwrap()
}

fn streamed(bytes: &[u8]) -> RenderedBatch {
    let mut d = zstd::Decoder::new(bytes).unwrap();
    serde_json::from_reader(&mut d).unwrap()
}

fn time<T>(f: impl Fn() -> T, rounds: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(f());
    }
    start.elapsed() / rounds
}

fn main() {
    println!("recipients CSV reader (parse_csv):");
    let mut per_row = Vec::new();
    for rows in [50_000usize, 100_000, 200_000] {
        let data = csv(rows);
        let t = time(|| conductor::lists::parse_csv(&data).unwrap().len(), 3);
        let us = t.as_secs_f64() * 1e6 / rows as f64;
        per_row.push(us);
        println!(
            "  {rows:>7} rows: {:>8.1} ms, {us:.2} µs/row",
            t.as_secs_f64() * 1e3
        );
    }
    println!(
        "  µs/row at 200k ÷ at 50k: {:.2} (1.0 = linear)",
        per_row[2] / per_row[0]
    );

    let bytes = batch();
    println!(
        "rendered batch decode, 1,000 messages, {} KB compressed:",
        bytes.len() / 1000
    );
    let (mut whole, mut stream) = (Duration::ZERO, Duration::ZERO);
    for round in 0..4 {
        // ABBA: A B, B A.
        let a_first = round % 2 == 0;
        for k in 0..2 {
            if (k == 0) == a_first {
                whole += time(|| RenderedBatch::decode(&bytes).unwrap().messages.len(), 5);
            } else {
                stream += time(|| streamed(&bytes).messages.len(), 5);
            }
        }
    }
    println!(
        "  whole-buffer (now) {:.1} ms, from_reader over zstd (before) {:.1} ms, ratio {:.2}",
        whole.as_secs_f64() * 1e3 / 4.0,
        stream.as_secs_f64() * 1e3 / 4.0,
        stream.as_secs_f64() / whole.as_secs_f64()
    );
}
