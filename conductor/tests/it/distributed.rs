//! The production topology in processes: one conductor, two `renderer` processes fed by SNS and
//! writing to S3, three `sender` processes sharing one cap — on PostgreSQL and moto, sending to a
//! Mailgun-compatible sink; then the same with one sender killed mid-lease.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::moto::*;
use crate::sink::{Sink, SINK_KEY};
use crate::support::*;

const SECRET: &str = "test-workers-secret-0123456789";

/// `target/<profile>/NAME`, built beside this test binary (`target/<profile>/deps/it-…`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is not built (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

struct Fleet {
    senders: Vec<tokio::process::Child>,
    renderers: Vec<tokio::process::Child>,
    app: TestApp,
    sink: std::sync::Arc<Sink>,
    schema: PgSchema,
    bucket: String,
}

const RENDERERS: usize = 2;

/// One conductor (in this process, SNS dispatch), two `renderer` processes subscribed to the render
/// topic and writing to S3, and `senders` sender processes reading from S3: all on PostgreSQL and moto.
async fn fleet(per_minute: u32, senders: usize) -> Fleet {
    let schema = PgSchema::create().await;
    let (sink, sink_url) = Sink::start().await;
    let moto = moto_url();
    let bucket = bucket().await;
    let render_topic = topic("render").await;
    let dir = tempfile::tempdir().unwrap();
    // The deployment's one config file; each worker reads its own sections of it.
    let file = dir.path().join("conductor.toml");
    std::fs::write(
        &file,
        format!(
            "[bodies]\nurl = \"s3://{bucket}/bodies\"\n\
             [bodies.s3]\nendpoint = \"{moto}\"\nregion = \"{REGION}\"\nforce_path_style = true\n\
             access_key_id = \"{KEY_ID}\"\n\
             [dispatch]\nmode = \"sns\"\n\
             [dispatch.sns]\ntopic_arn = \"{render_topic}\"\nendpoint = \"{moto}\"\n\
             access_key_id = \"{KEY_ID}\"\n\
             [renderer]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nverify_signatures = false\n\
             public_url = \"http://127.0.0.1:{{port}}/sns\"\n\
             [provider]\nkind = \"mailgun\"\ntimeout_ms = 2000\n\
             [provider.mailgun]\nbase_url = \"{sink_url}\"\ndomain = \"mg.example.com\"\n\
             [sender]\nlease_size = 50\nlanes = 2\n"
        ),
    )
    .unwrap();
    let mut config = test_config(dir.path());
    config.store.url = schema.url.clone();
    config.bodies = bodies_config(&bucket);
    config.bodies.url = format!("s3://{bucket}/bodies");
    config.dispatch.mode = renderer::deploy::aws::DispatchMode::Sns;
    config.dispatch.sns = sns_topic(&render_topic);
    config.dispatch.redispatch_after_ms = 10_000;
    config.governor.per_minute = per_minute;
    config.workers.embedded_sender = false;
    config.workers.secret = Some(SECRET.into());
    config.workers.lease_grace_ms = 1_000;
    config.provider.timeout_ms = 2_000;
    let app = spawn_app_in(dir, config, None).await;
    let spawn = |name: &str| {
        tokio::process::Command::new(binary(name))
            .args(["--conductor", &app.base, "--config", file.to_str().unwrap()])
            .env("CONDUCTOR__WORKERS__SECRET", SECRET)
            .env("CONDUCTOR__PROVIDER__MAILGUN__API_KEY", SINK_KEY)
            .envs(key_env())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let renderers = (0..RENDERERS).map(|_| spawn("renderer")).collect();
    let senders = (0..senders).map(|_| spawn("sender")).collect();
    // Campaigns are created once both renderers hear the topic (else the first doorbells ring for
    // no one and wait for redispatch).
    let start = Instant::now();
    loop {
        let subs = sns()
            .await
            .list_subscriptions_by_topic()
            .topic_arn(&render_topic)
            .send()
            .await
            .unwrap();
        if subs.subscriptions().len() == RENDERERS {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "renderers did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Fleet {
        senders,
        renderers,
        app,
        sink,
        schema,
        bucket,
    }
}

impl Fleet {
    async fn stop(mut self) {
        for s in &mut self.senders {
            let _ = s.start_kill();
            let _ = s.wait().await;
        }
        // SIGTERM, so that each renderer leaves the topic as it would in production.
        for r in &mut self.renderers {
            if let Some(pid) = r.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(30), r.wait())
                .await
                .is_err()
            {
                let _ = r.start_kill();
            }
        }
        self.app.stop().await;
        self.schema.drop().await;
    }

    /// Leases closed by expiry rather than by their sender's last report (a report after expiry is
    /// refused, so a lease closed past its expiry was expired by the conductor).
    async fn expired_leases(&self) -> i64 {
        let mut db = sqlx::AnyConnection::connect(&self.schema.url)
            .await
            .unwrap();
        sqlx::query_scalar("SELECT count(*) FROM leases WHERE closed_ms > expires_ms")
            .fetch_one(&mut db)
            .await
            .unwrap()
    }

    /// Recipient states straight from the database.
    async fn states(&self, campaign: &str) -> HashMap<String, Vec<i64>> {
        let mut db = sqlx::AnyConnection::connect(&self.schema.url)
            .await
            .unwrap();
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, state FROM recipients WHERE campaign_id = $1")
                .bind(campaign)
                .fetch_all(&mut db)
                .await
                .unwrap();
        let mut out: HashMap<String, Vec<i64>> = HashMap::new();
        for (id, state) in rows {
            out.entry(state).or_default().push(id);
        }
        out
    }

    fn received(&self) -> Vec<i64> {
        self.sink
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.recipient_id.parse().unwrap())
            .collect()
    }
}

#[tokio::test]
async fn three_sender_processes_deliver_every_recipient_exactly_once() {
    let f = fleet(6_000, 3).await;
    let id = f.app.create(&inline_campaign(recipients(400))).await;
    let c = f
        .app
        .wait_for(&id, Duration::from_secs(90), |c| c["status"] == "completed")
        .await;
    assert_eq!(c["counts"]["sent"], 400, "{c}");
    assert_eq!(
        keys(&f.bucket, &format!("bodies/campaigns/{id}/batches/"))
            .await
            .len(),
        4,
        "each batch rendered by a renderer process into S3, once"
    );
    let mut got = f.received();
    got.sort();
    assert_eq!(
        got,
        (0..400).collect::<Vec<_>>(),
        "every recipient once, none twice"
    );
    // A cap that binds is tested on the manual clock (governor.rs): 400 recipients never reach
    // 6,000 a minute, so a check of it here could not fail.
    f.stop().await;
}

#[tokio::test]
async fn a_sender_killed_mid_lease_loses_no_one_and_only_unknowns_may_be_doubled() {
    // 1,200 a minute is 20 a second: slow enough to kill a sender in the middle of its work.
    let mut f = fleet(1_200, 3).await;
    // A slow provider: senders have requests in flight when one is killed, so some sends are
    // usually in doubt (the split itself is tested deterministically in the store suite).
    f.sink
        .answer_after_ms
        .store(300, std::sync::atomic::Ordering::Relaxed);
    let id = f.app.create(&inline_campaign(recipients(300))).await;
    let start = Instant::now();
    while f.received().len() < 60 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "sending did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.senders[0].start_kill().unwrap(); // SIGKILL: no goodbye, leases left open
    f.senders[0].wait().await.unwrap();

    // The dead sender's leases expire; the others finish everything else.
    let c = f
        .app
        .wait_for(&id, Duration::from_secs(120), |c| {
            c["counts"]["pending"] == 0
        })
        .await;
    assert!(
        f.expired_leases().await >= 1,
        "the killed sender held a lease, which the conductor expired"
    );
    let states = f.states(&id).await;
    let sent = states.get("sent").cloned().unwrap_or_default();
    let unknown = states.get("unknown").cloned().unwrap_or_default();
    assert_eq!(
        sent.len() + unknown.len(),
        300,
        "every recipient is sent or unknown: {c}"
    );

    let mut received = f.received();
    received.sort();
    let mut once = received.clone();
    once.dedup();
    assert_eq!(once.len(), received.len(), "nobody was mailed twice");
    // Every `sent` recipient arrived; the ones that arrived without being recorded sent are all
    // among the `unknown` — the set an operator reviews before any resend.
    for id in &sent {
        assert!(
            received.binary_search(id).is_ok(),
            "sent recipient {id} never arrived"
        );
    }
    for id in &received {
        assert!(
            sent.contains(id) || unknown.contains(id),
            "recipient {id} arrived but is neither sent nor unknown"
        );
    }
    f.stop().await;
}
