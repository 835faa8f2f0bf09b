//! The dashboard in Debian's headless Chromium, driven by playwright-core (`tests/browser/`): a
//! running campaign's progress advances on the page, its Pause button pauses it, its message is
//! shown recipient by recipient, and opens and clicks appear as recipients make them. `infra/test.sh`
//! installs Chromium; the test installs playwright-core itself the first time, like moto.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// playwright-core in `tests/browser/node_modules`, installed from the lockfile when missing.
fn playwright() {
    let dir = browser_dir();
    if dir.join("node_modules/playwright-core").exists() {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm (Node.js) is needed for the browser test");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// The browser to drive: Debian's Chromium, or `CHROMIUM`. On a machine without one (`infra/test.sh`
/// installs it where the user may; `cargo test` alone does not) the test says it did not run; where
/// `REQUIRE_BROWSER` is set, as `.ci/run` sets it, a missing browser fails it.
fn chromium() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::path::Path::new(&chromium).exists() {
        return Some(chromium);
    }
    let hint = format!("Debian's Chromium is needed at {chromium} (apt-get install chromium; infra/test.sh does) or set CHROMIUM");
    assert!(std::env::var_os("REQUIRE_BROWSER").is_none(), "{hint}");
    eprintln!("NOT RUN: the dashboard browser test. {hint}");
    None
}

#[tokio::test]
async fn the_dashboard_shows_a_send_advancing_and_its_pause_button_pauses_it() {
    let Some(chromium) = chromium() else {
        return;
    };
    playwright();
    // 120 a minute at most: the send outlasts the test.
    let app = spawn_app_with(|c| {
        c.governor.per_minute = 120;
        c.unsubscribe.base_url = Some("https://mail.example.com".into());
        c.unsubscribe.secret = Some("unsubscribe-secret-for-tests-0123456789".into());
    })
    .await;
    // Tracked, with a link to follow: the page shows opens and clicks as they come.
    let mut campaign = inline_campaign(recipients(2_000));
    campaign["html"] =
        r#"<p>Hi {{name}} from {{city}} <a href="https://shop.example.com/sale">Sale</a></p>"#
            .into();
    campaign["track"] = serde_json::json!({"opens": true, "clicks": true});
    let id = app.create(&campaign).await;
    let script = browser_dir().join("dashboard.mjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&app.base)
        .arg(&id)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser test did not finish in two minutes")
        .expect("node runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("paused at"), "{stdout}");
    let c = app.get_json(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(c["status"], "paused");
    // The page itself is served from the binary.
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN, works offline"
    );
    app.stop().await;
}
