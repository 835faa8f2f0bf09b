//! `spawn_app()`: the real application on port 0 with its own temporary store, bodies and outbox.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conductor::config::Config;
use conductor::startup::{Application, Hooks};
use sender::SystemClock;
use serde_json::Value;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// The running config; hot reloads replace it.
    pub config: tokio::sync::watch::Sender<Arc<Config>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../templates")
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.max_body_bytes = 256 * 1024;
    c.store.url = format!("sqlite://{}", dir.join("conductor.db").display());
    c.bodies.url = format!("file://{}", dir.join("bodies").display());
    c.provider.outbox.dir = dir.join("outbox");
    c.campaigns.templates_dir = templates_dir();
    c.campaigns.batch_size = 100;
    c.governor.per_minute = 1_000_000;
    c
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    adjust(&mut config);
    spawn_app_in(dir, config, None).await
}

/// The app on `config`, watching `config_file` for changes when given.
pub async fn spawn_app_in(
    dir: tempfile::TempDir,
    config: Config,
    config_file: Option<PathBuf>,
) -> TestApp {
    spawn_hooked(dir, config, config_file, Hooks::default()).await
}

/// The app with test doubles in place of some of its outside world.
pub async fn spawn_hooked(
    dir: tempfile::TempDir,
    config: Config,
    config_file: Option<PathBuf>,
    hooks: Hooks,
) -> TestApp {
    spawn_full(dir, config, config_file, hooks, Arc::new(SystemClock)).await
}

/// The app on a clock of the test's choosing (a `ManualClock`, say).
pub async fn spawn_full(
    dir: tempfile::TempDir,
    config: Config,
    config_file: Option<PathBuf>,
    hooks: Hooks,
    clock: Arc<dyn sender::Clock>,
) -> TestApp {
    // TEST_LOG=info (any filter) shows the app's logs for a failing test.
    static LOGS: std::sync::Once = std::sync::Once::new();
    LOGS.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .init();
        }
    });
    let app = Application::build_with(config, config_file, clock, hooks)
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr());
    let config = app.config();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp {
        base,
        client: reqwest::Client::new(),
        dir,
        config,
        stop: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A draft's list replaced by a CSV body.
    pub async fn put_csv(&self, id: &str, csv: &'static str) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/v1/campaigns/{id}/recipients")))
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap()
    }

    /// A campaign created from a multipart body (the `campaign` part, then the list).
    pub async fn post_multipart(&self, form: reqwest::multipart::Form) -> reqwest::Response {
        self.client
            .post(self.url("/v1/campaigns"))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Creates a campaign that must be accepted; returns its id.
    pub async fn create(&self, body: &Value) -> String {
        let r = self.post_json("/v1/campaigns", body).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `POST /v1/campaigns/{id}/{action}`.
    pub async fn act(&self, id: &str, action: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/campaigns/{id}/{action}")))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn campaign_count(&self) -> usize {
        self.get_json("/v1/campaigns").await["campaigns"]
            .as_array()
            .unwrap()
            .len()
    }

    /// Polls a campaign until `done` holds; bounded, so a stuck campaign fails the test instead of hanging.
    pub async fn wait_for(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = std::time::Instant::now();
        loop {
            let c = self.get_json(&format!("/v1/campaigns/{id}")).await;
            if done(&c) {
                return c;
            }
            assert!(
                start.elapsed() < limit,
                "campaign did not get there in {limit:?}: {c}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops gracefully; returns the app's folder (store, bodies, outbox) so another app can start
    /// on the same data.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        self.dir
    }
}

/// A problem+json answer: checks status, media type and `type`, returns the body.
pub async fn expect_problem(r: reqwest::Response, status: u16, kind: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "status");
    let ct = r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(ct, "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], kind, "{body}");
    assert_eq!(body["status"], status);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

pub fn recipients(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| serde_json::json!({"email": format!("r{i}@example.com"), "name": format!("Zoë {i}"), "data": {"city": "Köln"}}))
        .collect()
}

pub fn inline_campaign(recipients: Vec<Value>) -> Value {
    serde_json::json!({
        "name": "Inline",
        "from": "News <news@example.com>",
        "subject": "Hello {{name}}",
        "html": "<p>Hi {{name}} from {{city}}</p>",
        "recipients": recipients,
    })
}

/// A fresh schema in the PostgreSQL test database (`TEST_POSTGRES_URL`, default the local server's
/// `test` database), so every test has its own tables.
pub struct PgSchema {
    pub url: String,
    name: String,
    admin: sqlx::AnyConnection,
}

impl PgSchema {
    pub async fn create() -> Self {
        use sqlx::Connection;
        let base = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        sqlx::any::install_default_drivers();
        let mut admin = sqlx::AnyConnection::connect(&base)
            .await
            .expect("PostgreSQL at TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        Self {
            url: format!("{base}{sep}options[search_path]={name}"),
            name,
            admin,
        }
    }

    pub async fn drop(mut self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&mut self.admin)
            .await
            .unwrap();
    }
}

pub fn is_completed(c: &Value) -> bool {
    c["status"] == "completed"
}

/// A multipart campaign creation: the `campaign` JSON part, then the list as the `recipients` part
/// of media type `media`.
pub fn list_form(campaign: &Value, list: String, media: &str) -> reqwest::multipart::Form {
    json_and_list("campaign", campaign, list, media)
}

/// A JSON part named `first`, then the list as the `recipients` part of media type `media`.
pub fn json_and_list(
    first: &str,
    json: &Value,
    list: String,
    media: &str,
) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .part(
            first.to_string(),
            reqwest::multipart::Part::text(json.to_string())
                .mime_str("application/json")
                .unwrap(),
        )
        .part(
            "recipients",
            reqwest::multipart::Part::text(list)
                .file_name("list")
                .mime_str(media)
                .unwrap(),
        )
}
