//! A moto server (S3 and SNS on loopback) for this test binary: `TEST_MOTO_URL` when set, otherwise
//! one started here from `infra/.venv` (which `infra/dev-stack.sh install` creates; CI runs it first)
//! that exits when this process does.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const REGION: &str = "us-east-1";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn moto_binary() -> PathBuf {
    let venv = workspace().join("infra/.venv/bin/moto_server");
    if !venv.exists() {
        let status = std::process::Command::new("bash")
            .arg(workspace().join("infra/dev-stack.sh"))
            .arg("install")
            .status()
            .expect("bash runs");
        assert!(status.success(), "infra/dev-stack.sh install failed");
    }
    venv
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn up(url: &str) -> bool {
    let addr = url.trim_start_matches("http://");
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_ok()
}

/// Moto takes any keys. Every client here is given them through its config section (as an
/// S3-compatible store's own keys would be), so nothing reads or writes the process environment.
pub const KEY_ID: &str = "testing";
pub const KEY_SECRET: &str = "testing";

/// What a worker process started on moto is given in its environment: the keys' secret halves.
pub fn key_env() -> [(String, String); 2] {
    [
        "CONDUCTOR__BODIES__S3__SECRET_ACCESS_KEY",
        "CONDUCTOR__DISPATCH__SNS__SECRET_ACCESS_KEY",
    ]
    .map(|k| (k.to_string(), KEY_SECRET.to_string()))
}

/// The moto endpoint, started on first use.
pub fn moto_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("TEST_MOTO_URL") {
            return url.trim_end_matches('/').to_string();
        }
        let binary = moto_binary();
        let port = free_port();
        // The watcher ends moto when this test process ends, however it ends.
        let script = format!(
            "\"$0\" -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
             while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill $m",
            pid = std::process::id()
        );
        let mut watcher = std::process::Command::new("sh")
            .args(["-c", &script])
            .arg(&binary)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        std::thread::spawn(move || watcher.wait());
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while !up(&url) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto did not listen on {url} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        url
    })
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn s3() -> aws_sdk_s3::Client {
    let url = moto_url();
    let secret = KEY_SECRET.into();
    let shared = renderer::deploy::aws::sdk_config(renderer::deploy::aws::Access {
        region: Some(REGION),
        endpoint: Some(url),
        keys: Some((KEY_ID, &secret)),
    })
    .await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    )
}

pub async fn sns() -> aws_sdk_sns::Client {
    sns_topic("").client().await
}

/// A new bucket of its own for one test.
pub async fn bucket() -> String {
    let name = unique("bodies");
    s3().await
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .unwrap();
    name
}

/// A new topic of its own for one test; returns its ARN.
pub async fn topic(prefix: &str) -> String {
    sns()
        .await
        .create_topic()
        .name(unique(prefix))
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string()
}

/// Every key in `bucket` under `prefix`.
pub async fn keys(bucket: &str, prefix: &str) -> Vec<String> {
    let out = s3()
        .await
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// `[bodies]` for `bucket` on moto.
pub fn bodies_config(bucket: &str) -> renderer::body_store::BodiesConfig {
    renderer::body_store::BodiesConfig {
        url: format!("s3://{bucket}/mail"),
        retention_days: 7,
        s3: renderer::body_store::S3Settings {
            endpoint: Some(moto_url().to_string()),
            region: Some(REGION.into()),
            force_path_style: true,
            access_key_id: Some(KEY_ID.into()),
            secret_access_key: Some(KEY_SECRET.into()),
        },
    }
}

/// `[dispatch.sns]`-style topic settings on moto.
pub fn sns_topic(arn: &str) -> renderer::deploy::aws::SnsTopic {
    renderer::deploy::aws::SnsTopic {
        topic_arn: arn.to_string(),
        region: Some(REGION.into()),
        endpoint: Some(moto_url().to_string()),
        access_key_id: Some(KEY_ID.into()),
        secret_access_key: Some(KEY_SECRET.into()),
    }
}
