//! A Mailgun-compatible sink on loopback: answers like Mailgun and records, on its own clock, the
//! moment each message arrives — the receiving side's view of the per-minute cap.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

#[derive(Debug, Clone)]
pub struct Received {
    pub at_ms: i64,
    pub to: String,
    pub recipient_id: String,
    pub campaign_id: String,
    pub html: String,
    /// The `h:List-Unsubscribe` and `h:List-Unsubscribe-Post` fields, as posted.
    pub list_unsubscribe: String,
    pub list_unsubscribe_post: String,
    /// The status the sink answered: 200 accepted; 429 and 5xx refused (only with [`Faults`]).
    pub status: u16,
}

/// A misbehaving provider: shares of requests answered 503, 429 with `Retry-After`, or slowly.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub server_error: f64,
    pub throttled: f64,
    pub retry_after_s: u64,
    pub slow: f64,
    pub slow_ms: u64,
}

#[derive(Default)]
pub struct Sink {
    pub received: Mutex<Vec<Received>>,
    /// How long each answer takes after the message is recorded (a slow provider).
    pub answer_after_ms: std::sync::atomic::AtomicU64,
    /// When not 0, only this many first requests wait `answer_after_ms`; the rest answer at once.
    pub delay_first: std::sync::atomic::AtomicUsize,
    pub faults: Mutex<Option<Faults>>,
}

pub const SINK_KEY: &str = "sink-key";

impl Sink {
    /// Starts on 127.0.0.1, port chosen by the OS; returns the base URL.
    pub async fn start() -> (Arc<Sink>, String) {
        let sink = Arc::new(Sink::default());
        let app = Router::new()
            .route("/v3/{domain}/messages", post(receive))
            .with_state(sink.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (sink, base)
    }

    /// Requests the sink accepted, and the distinct recipients among them (sorted).
    pub fn accepted(&self) -> (usize, Vec<String>) {
        let mut ids: Vec<String> = self
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.recipient_id.clone())
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        (n, ids)
    }

    /// Messages received per calendar minute (sink clock).
    pub fn per_minute(&self) -> BTreeMap<i64, usize> {
        let mut out = BTreeMap::new();
        // Every request counts, refused or not: each one is a send the provider saw.
        for r in self.received.lock().unwrap().iter() {
            *out.entry(r.at_ms.div_euclid(60_000) * 60_000).or_default() += 1;
        }
        out
    }
}

async fn receive(
    State(sink): State<Arc<Sink>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response, StatusCode> {
    let expected = format!("Basic {}", base64(&format!("api:{SINK_KEY}")));
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for required in ["from", "to", "subject", "html", "text"] {
        if field(required).is_empty() {
            return Err(StatusCode::BAD_REQUEST);
        }
    }
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // One draw decides: 503, 429, slow, or a normal answer.
    let faults = *sink.faults.lock().unwrap();
    let (status, slow_ms) = match faults {
        Some(f) => {
            let x: f64 = rand::random();
            if x < f.server_error {
                (503, 0)
            } else if x < f.server_error + f.throttled {
                (429, 0)
            } else if x < f.server_error + f.throttled + f.slow {
                (200, f.slow_ms)
            } else {
                (200, 0)
            }
        }
        None => (200, 0),
    };
    let id = {
        let mut received = sink.received.lock().unwrap();
        received.push(Received {
            at_ms,
            to: field("to"),
            recipient_id: field("v:recipient_id"),
            campaign_id: field("v:campaign_id"),
            html: field("html"),
            list_unsubscribe: field("h:List-Unsubscribe"),
            list_unsubscribe_post: field("h:List-Unsubscribe-Post"),
            status,
        });
        format!("<{}.{}@{domain}>", at_ms, received.len())
    };
    let nth = sink.received.lock().unwrap().len();
    let first = sink.delay_first.load(std::sync::atomic::Ordering::Relaxed);
    let slow_answer = if first == 0 || nth <= first {
        sink.answer_after_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    } else {
        0
    };
    let delay = slow_answer + slow_ms;
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    Ok(match status {
        429 => {
            let retry = faults.map_or(1, |f| f.retry_after_s).to_string();
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry)],
                Json(serde_json::json!({ "message": "Too many requests" })),
            )
                .into_response()
        }
        503 => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "message": "Service temporarily unavailable" })),
        )
            .into_response(),
        _ => Json(serde_json::json!({ "id": id, "message": "Queued. Thank you." })).into_response(),
    })
}

fn base64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Points `config`'s provider at a sink started with [`Sink::start`].
pub fn send_to(config: &mut conductor::config::Config, base: &str) {
    config.provider.kind = conductor::config::ProviderKind::Mailgun;
    config.provider.mailgun.base_url = base.to_string();
    config.provider.mailgun.domain = "mg.example.com".into();
    config.provider.mailgun.api_key = Some(SINK_KEY.into());
}
