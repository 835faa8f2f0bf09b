//! The AWS adapters against a real moto server: the S3 body store, retention, SNS dispatch to a
//! running renderer service, and lifecycle events on SNS.

use std::sync::Arc;
use std::time::Duration;

use renderer::body_store::{BodyError, BodyStore, Location, S3BodyStore};
use renderer::deploy::aws::DispatchMode;
use renderer::deploy::remote::HttpRenderSource;
use renderer::service::{RendererApp, RendererSettings};
use renderer::sns::HttpsCertFetcher;
use renderer::Renderer;
use serde_json::Value;

use crate::moto::*;
use crate::support::*;

const SECRET: &str = "test-workers-secret-0123456789";

async fn s3_store(bucket: &str) -> S3BodyStore {
    let cfg = bodies_config(bucket);
    let Location::S3 { bucket, prefix } = cfg.location().unwrap() else {
        panic!("not s3")
    };
    S3BodyStore::connect(&cfg.s3, bucket, prefix).await
}

#[tokio::test]
async fn the_s3_body_store_puts_gets_rewrites_and_deletes_by_prefix() {
    let bucket = bucket().await;
    let store = s3_store(&bucket).await;
    for n in 0..3 {
        store
            .put(&format!("campaigns/a/batches/{n}.json.zst"), vec![n; 10])
            .await
            .unwrap();
    }
    store
        .put("campaigns/b/batches/0.json.zst", b"b".to_vec())
        .await
        .unwrap();
    // Re-rendering writes the same key again: harmless.
    store
        .put("campaigns/a/batches/1.json.zst", vec![1; 10])
        .await
        .unwrap();
    assert_eq!(
        store.get("campaigns/a/batches/1.json.zst").await.unwrap(),
        vec![1; 10]
    );
    assert_eq!(
        keys(&bucket, "mail/campaigns/a/").await.len(),
        3,
        "objects live under the configured prefix"
    );
    assert!(matches!(
        store.get("campaigns/a/batches/9.json.zst").await,
        Err(BodyError::NotFound(_))
    ));
    assert!(matches!(
        store.get("../escape").await,
        Err(BodyError::BadKey(_))
    ));
    store.delete_prefix("campaigns/a/").await.unwrap();
    store.delete_prefix("campaigns/a/").await.unwrap(); // nothing left: fine
    assert!(keys(&bucket, "mail/campaigns/a/").await.is_empty());
    assert_eq!(
        store.get("campaigns/b/batches/0.json.zst").await.unwrap(),
        b"b",
        "another campaign's bodies stay"
    );
    // The right bucket name on an endpoint that has no such bucket: a clear error, not a panic.
    let missing = s3_store("no-such-bucket-here").await;
    assert!(matches!(
        missing.put("k", b"x".to_vec()).await,
        Err(BodyError::Remote { .. })
    ));
}

#[tokio::test]
async fn a_finished_campaigns_bodies_are_deleted_after_retention() {
    let bucket = bucket().await;
    let app = spawn_app_with(|c| {
        c.bodies = bodies_config(&bucket);
        c.bodies.retention_days = 0;
    })
    .await;
    let id = app.create(&inline_campaign(recipients(150))).await;
    let c = app
        .wait_for(&id, Duration::from_secs(60), |c| c["status"] == "completed")
        .await;
    assert_eq!(c["counts"]["sent"], 150, "{c}");
    let prefix = format!("mail/campaigns/{id}/");
    let start = std::time::Instant::now();
    while !keys(&bucket, &prefix).await.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "bodies still in S3 after the campaign ended with retention 0"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}

/// Records what SNS posts to it.
async fn collector() -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

async fn events(server: &wiremock::MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|envelope| {
            serde_json::from_str(envelope["Message"].as_str().unwrap_or("")).ok()
        })
        .collect()
}

#[tokio::test]
async fn sns_dispatch_feeds_a_running_renderer_and_events_reach_subscribers() {
    let bucket = bucket().await;
    let render_topic = topic("render").await;
    let events_topic = topic("events").await;
    let sink = collector().await;
    sns()
        .await
        .subscribe()
        .topic_arn(&events_topic)
        .protocol("http")
        .endpoint(format!("{}/events", sink.uri()))
        .send()
        .await
        .unwrap();

    let app = spawn_app_with(|c| {
        c.bodies = bodies_config(&bucket);
        c.dispatch.mode = DispatchMode::Sns;
        c.dispatch.sns = sns_topic(&render_topic);
        c.events.sns = Some(sns_topic(&events_topic));
        c.workers.secret = Some(SECRET.into());
    })
    .await;

    let renderer = RendererTask::start(&app, &bucket).await;
    let id = app.create(&inline_campaign(recipients(250))).await;
    let c = app
        .wait_for(&id, Duration::from_secs(90), |c| c["status"] == "completed")
        .await;
    assert_eq!(c["counts"]["sent"], 250, "{c}");
    assert_eq!(c["batches_rendered"], 3, "{c}");
    assert_eq!(
        keys(&bucket, &format!("mail/campaigns/{id}/batches/"))
            .await
            .len(),
        3,
        "one object per batch, written by the renderer service"
    );
    // Every message is in the outbox exactly once.
    let outbox = app.dir.path().join("outbox").join(&id);
    assert_eq!(std::fs::read_dir(&outbox).unwrap().count(), 250);

    let start = std::time::Instant::now();
    let kinds = loop {
        let got: Vec<String> = events(&sink)
            .await
            .iter()
            .filter(|e| e["campaign_id"] == id.as_str())
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect();
        if got.contains(&"completed".to_string()) || start.elapsed() > Duration::from_secs(20) {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(sorted, ["completed", "created", "started"], "{kinds:?}");
    let all = events(&sink).await;
    let completed = all.iter().find(|e| e["kind"] == "completed").unwrap();
    assert_eq!(completed["schema"], "conductor.campaign-event/1");
    assert_eq!(completed["counts"]["sent"], 250);

    renderer.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_doorbell_nobody_heard_is_rung_again() {
    let bucket = bucket().await;
    let render_topic = topic("render").await;
    let app = spawn_app_with(|c| {
        c.bodies = bodies_config(&bucket);
        c.dispatch.mode = DispatchMode::Sns;
        c.dispatch.sns = sns_topic(&render_topic);
        c.dispatch.redispatch_after_ms = 5_000;
        c.workers.secret = Some(SECRET.into());
    })
    .await;
    // No renderer is subscribed yet: the first notifications reach no one. Both batches' jobs are
    // published (the store says when) before a renderer exists to hear them.
    let id = app.create(&inline_campaign(recipients(120))).await;
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        app.dir.path().join("conductor.db").display()
    ))
    .await
    .unwrap();
    let waited = std::time::Instant::now();
    loop {
        let dispatched: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM batches WHERE campaign_id = ?1 AND dispatched_ms IS NOT NULL",
        )
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
        if dispatched == 2 {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "jobs never published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.close().await;
    // A renderer arrives; the store still says "not rendered", so the jobs are published again:
    // without that second ring nothing would ever be rendered.
    let renderer = RendererTask::start(&app, &bucket).await;
    let c = app
        .wait_for(&id, Duration::from_secs(60), |c| c["status"] == "completed")
        .await;
    assert_eq!(c["counts"]["sent"], 120, "{c}");
    renderer.stop().await;
    app.stop().await;
}

/// A renderer service in this process, built as the `renderer` binary builds it, subscribing itself
/// to the app's render topic.
struct RendererTask {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), renderer::service::AppError>>,
}

impl RendererTask {
    async fn start(app: &TestApp, bucket: &str) -> Self {
        let settings = RendererSettings {
            listen: "127.0.0.1:0".into(),
            workers: 2,
            verify_signatures: false, // moto cannot sign
            public_url: Some("http://127.0.0.1:{port}/sns".into()),
        };
        let dispatch = app.config.borrow().dispatch.clone();
        let bodies = bodies_config(bucket).open().await.unwrap();
        let source = Arc::new(HttpRenderSource::new(&app.base, SECRET.into()).unwrap());
        let service = RendererApp::build(
            &settings,
            &dispatch,
            Arc::new(Renderer::new(source, bodies)),
            Arc::new(HttpsCertFetcher::new().unwrap()),
        )
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.run_until(async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
