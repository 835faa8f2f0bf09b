//! Two costs that grew with the campaign or dominated the send path, measured side by side in one
//! run (loopback-free, bounded, stops by itself):
//! - the recipients CSV reader at 50k, 100k and 200k rows: time per row should stay flat;
//! - encoding one rendered batch of 1,000 messages, as a renderer does per batch, and decoding it,
//!   as a sender does: format 2 (length-prefixed fields, what `RenderedBatch::encode` writes)
//!   against format 1 (JSON, what it wrote before; `decode` still reads it), alternating ABBA.
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

fn batch() -> RenderedBatch {
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
    b
}

/// Format 1, as `RenderedBatch::encode` wrote it before format 2.
fn json_encoded(b: &RenderedBatch) -> Vec<u8> {
    let mut v1 = b.clone();
    v1.version = 1;
    zstd::bulk::compress(&serde_json::to_vec(&v1).unwrap(), 3).unwrap()
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
        let t = time(
            || conductor::domain::lists::parse_csv(&data).unwrap().len(),
            3,
        );
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

    let b = batch();
    let (binary, json) = (b.encode().unwrap(), json_encoded(&b));
    println!(
        "rendered batch, 1,000 messages: format 2 {} KB, format 1 {} KB compressed",
        binary.len() / 1000,
        json.len() / 1000
    );
    // [format 2, format 1] × [encode, decode]
    let mut t = [[Duration::ZERO; 2]; 2];
    for round in 0..4 {
        // ABBA: A B, B A.
        let a_first = round % 2 == 0;
        for k in 0..2 {
            if (k == 0) == a_first {
                t[0][0] += time(|| b.encode().unwrap().len(), 5);
                t[0][1] += time(|| RenderedBatch::decode(&binary).unwrap().messages.len(), 5);
            } else {
                t[1][0] += time(|| json_encoded(&b).len(), 5);
                t[1][1] += time(|| RenderedBatch::decode(&json).unwrap().messages.len(), 5);
            }
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / 4.0;
    for (what, k) in [("encode", 0), ("decode", 1)] {
        println!(
            "  {what}: format 2 (now) {:.1} ms, format 1 JSON (before) {:.1} ms, ratio {:.2}",
            ms(t[0][k]),
            ms(t[1][k]),
            t[1][k].as_secs_f64() / t[0][k].as_secs_f64()
        );
    }
}
