//! The distributed topology for the benches: a conductor on PostgreSQL (a fresh schema, dropped at
//! the end) with its embedded sender off, N `sender` processes and optionally R `renderer`
//! processes on moto's SNS and S3, sending one demo campaign to the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conductor::config::Config;
use conductor::store::Status;
use sender::SystemClock;
use sqlx::Connection;

const SECRET: &str = "bench-workers-secret-0123456789";

/// The sink's Mailgun key, which the sender processes get from the environment as a real
/// deployment would.
pub struct Sink<'a> {
    pub url: &'a str,
    pub key: &'a str,
}

/// Runs the demo campaign of `recipients` to the end; `config` already points at the sink.
pub async fn distributed(
    mut config: Config,
    dir: &std::path::Path,
    recipients: usize,
    (senders, renderers): (usize, usize),
    sink: Sink<'_>,
) {
    let base = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(&base)
        .await
        .expect("PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    config.store.url = format!("{base}{sep}options[search_path]={schema}");
    config.server.listen = "127.0.0.1:0".into();
    config.workers.embedded_sender = false;
    config.workers.secret = Some(SECRET.into());

    let mut shared = format!(
        "[provider]\nkind = \"mailgun\"\n[provider.mailgun]\nbase_url = \"{}\"\ndomain = \"mg.example.com\"\n",
        sink.url
    );
    if renderers == 0 {
        shared.push_str(&format!("[bodies]\nurl = \"{}\"\n", config.bodies.url));
    } else {
        shared.push_str(&on_moto(&mut config).await);
    }
    let file = dir.join("conductor.toml");
    std::fs::write(&file, shared).unwrap();
    let app = conductor::startup::Application::build(config, None, Arc::new(SystemClock))
        .await
        .expect("conductor");
    let url = format!("http://{}", app.local_addr());
    let svc = app.service();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));
    let spawn = |name: &str| {
        let binary = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/release")
            .join(name);
        assert!(
            binary.exists(),
            "build it first: cargo build --release --workspace"
        );
        tokio::process::Command::new(&binary)
            .args(["--conductor", &url, "--config", file.to_str().unwrap()])
            .env("CONDUCTOR__WORKERS__SECRET", SECRET)
            .env("CONDUCTOR__PROVIDER__MAILGUN__API_KEY", sink.key)
            .envs(moto_key_env())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("worker process")
    };
    let mut children: Vec<_> = (0..renderers)
        .map(|_| spawn("renderer"))
        .chain((0..senders).map(|_| spawn("sender")))
        .collect();
    if renderers > 0 {
        // Let the renderers subscribe before the first doorbell rings.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (created, _, _) = svc
        .create(
            conductor::cli::demo::request(recipients),
            conductor::cli::demo::recipients(recipients),
            None,
        )
        .await
        .expect("campaign");
    let mut last = Instant::now();
    loop {
        let c = svc.store.campaign(&created.id).await.unwrap();
        if last.elapsed() > Duration::from_secs(10) {
            last = Instant::now();
            println!("  sent {} / {}", c.counts.sent, c.counts.total);
        }
        if matches!(c.status, Status::Completed | Status::Cancelled) {
            println!(
                "  campaign {}: sent {} failed {} unknown {}",
                c.status.as_str(),
                c.counts.sent,
                c.counts.failed,
                c.counts.unknown
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for child in &mut children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Moto takes any keys; they are given through the config sections, never the process environment.
const MOTO_KEY_ID: &str = "testing";
const MOTO_SECRET: &str = "testing";

/// The keys' secret halves, as the workers' environment holds them.
fn moto_key_env() -> [(String, String); 2] {
    [
        "CONDUCTOR__BODIES__S3__SECRET_ACCESS_KEY",
        "CONDUCTOR__DISPATCH__SNS__SECRET_ACCESS_KEY",
    ]
    .map(|k| (k.to_string(), MOTO_SECRET.to_string()))
}

/// Points `config` at a fresh bucket and render topic on moto; returns the workers' config sections.
async fn on_moto(config: &mut Config) -> String {
    let moto = std::env::var("MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5055".into());
    let region = "us-east-1";
    let secret = MOTO_SECRET.into();
    let shared = renderer::deploy::aws::sdk_config(renderer::deploy::aws::Access {
        region: Some(region),
        endpoint: Some(&moto),
        keys: Some((MOTO_KEY_ID, &secret)),
    })
    .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    );
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("moto is not running: start it with infra/dev-stack.sh");
    let topic = aws_sdk_sns::Client::new(&shared)
        .create_topic()
        .name(&name)
        .send()
        .await
        .expect("SNS topic")
        .topic_arn()
        .unwrap()
        .to_string();
    let sections = format!(
        "[bodies]\nurl = \"s3://{name}/bodies\"\n\
         [bodies.s3]\nendpoint = \"{moto}\"\nregion = \"{region}\"\nforce_path_style = true\n\
         access_key_id = \"{MOTO_KEY_ID}\"\n\
         [dispatch]\nmode = \"sns\"\n[dispatch.sns]\ntopic_arn = \"{topic}\"\nendpoint = \"{moto}\"\n\
         access_key_id = \"{MOTO_KEY_ID}\"\n\
         [renderer]\nlisten = \"127.0.0.1:0\"\nverify_signatures = false\n\
         public_url = \"http://127.0.0.1:{{port}}/sns\"\n"
    );
    let parsed: Config =
        renderer::deploy::config::from_toml(&sections, moto_key_env()).expect("bench config");
    config.bodies = parsed.bodies;
    config.dispatch = parsed.dispatch;
    sections
}
