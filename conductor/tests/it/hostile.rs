//! Requests meant to hurt, through the real HTTP API: each is refused with a problem document, the
//! server still answers afterwards, and nothing half-made is stored.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn refused(app: &TestApp, body: &Value, status: u16) -> Value {
    let r = app.post_json("/v1/campaigns", body).await;
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    still_well(app).await;
    problem
}

/// The server answers and holds no campaign.
async fn still_well(app: &TestApp) {
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.campaign_count().await, 0, "nothing half-made is stored");
}

fn with_html(html: &str) -> Value {
    let mut c = inline_campaign(recipients(3));
    c["html"] = json!(html);
    c
}

#[tokio::test]
async fn templates_that_would_recurse_or_explode_are_refused_naming_why() {
    let app = spawn_app().await;
    let p = refused(
        &app,
        &with_html(r#"{{#*inline "r"}}x{{> r}}{{/inline}}{{> r}}"#),
        422,
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("partial `r` includes itself"),
        "{p}"
    );
    let mutual = r#"{{#*inline "a"}}<b>{{> b}}</b>{{/inline}}{{#*inline "b"}}<i>{{> a}}</i>{{/inline}}{{> a}}"#;
    let p = refused(&app, &with_html(mutual), 422).await;
    assert!(p["detail"].as_str().unwrap().contains("a → b → a"), "{p}");
    // Seven levels of inline partials, each including the one below ten times: 10^7 renders.
    let mut html = String::from(r#"{{#*inline "p0"}}x{{/inline}}"#);
    for level in 1..=7 {
        html.push_str(&format!(
            "{{{{#*inline \"p{level}\"}}}}{}{{{{/inline}}}}",
            format!("{{{{> p{}}}}}", level - 1).repeat(10)
        ));
    }
    html.push_str("{{> p7}}");
    let started = std::time::Instant::now();
    let p = refused(&app, &with_html(&html), 422).await;
    assert!(p["detail"].as_str().unwrap().contains("more than"), "{p}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let p = refused(&app, &with_html(&"{{#if name}}".repeat(5_000)), 422).await;
    assert!(p["detail"].as_str().unwrap().contains("nested"), "{p}");
    app.stop().await;
}

#[tokio::test]
async fn a_message_over_the_limit_refuses_the_campaign_naming_the_row() {
    let app = spawn_app_with(|c| c.campaigns.max_message_bytes = 20_000).await;
    let mut people = recipients(3);
    people[1]["data"]["bio"] = json!("y".repeat(15_000));
    for p in people.iter_mut().filter(|p| p["data"]["bio"].is_null()) {
        p["data"]["bio"] = json!("short");
    }
    let mut c = inline_campaign(people);
    c["html"] = json!("<p>{{bio}}</p><p>{{bio}}</p>");
    let p = refused(&app, &c, 422).await;
    let first = &p["errors"][0];
    assert_eq!(first["field"], "recipients[1] (r1@example.com)", "{p}");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes"),
        "{p}"
    );
    app.stop().await;
}

#[tokio::test]
async fn another_site_cannot_post_and_a_foreign_host_is_not_served() {
    let app = spawn_app().await;
    let form = reqwest::multipart::Form::new()
        .text(
            "campaign",
            inline_campaign(vec![])
                .to_string()
                .replace(",\"recipients\":[]", ""),
        )
        .text("recipients", "email\nvictim@example.com\n");
    let r = app
        .client
        .post(app.url("/v1/campaigns"))
        .header("origin", "https://evil.example")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["type"],
        "/problems/cross-site"
    );
    let r = app
        .client
        .post(app.url("/v1/campaigns"))
        .header("sec-fetch-site", "cross-site")
        .json(&inline_campaign(recipients(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    still_well(&app).await;
    // DNS rebinding: the browser connects to 127.0.0.1 but says whose page it is.
    let r = app
        .client
        .get(app.url("/v1/campaigns"))
        .header("host", "rebind.evil")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    // The server's own page may post.
    let r = app
        .client
        .post(app.url("/v1/campaigns"))
        .header("origin", app.base.clone())
        .header("sec-fetch-site", "same-origin")
        .json(&inline_campaign(recipients(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    app.stop().await;
}

/// Sends `Content-Length: 60 MiB` and writes until the server answers; returns the status line and
/// how much was written by then.
async fn post_huge(app: &TestApp, path: &str, headers: &str) -> (String, usize) {
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let total = 60 * 1024 * 1024;
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{headers}Content-Length: {total}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let chunk = vec![b' '; 64 * 1024];
    let mut written = 0usize;
    let mut answer = vec![0u8; 256];
    let n = loop {
        tokio::select! {
            n = rd.read(&mut answer) => break n.unwrap(),
            w = wr.write_all(&chunk), if written < total => match w {
                Ok(()) => written += chunk.len(),
                Err(_) => break rd.read(&mut answer).await.unwrap_or(0),
            },
        }
    };
    let text = String::from_utf8_lossy(&answer[..n]).to_string();
    (text.lines().next().unwrap_or_default().to_string(), written)
}

#[tokio::test]
async fn huge_bodies_are_refused_before_they_are_read() {
    let app = spawn_app_with(|c| {
        c.feedback.mailgun.signing_key = Some("key-0123456789abcdef".into());
        c.workers.secret = Some("worker-secret-0123456789".into());
    })
    .await;
    let limit = 60 * 1024 * 1024;
    // The worker API checks its secret in the header: nothing of the body is needed.
    let (status, written) = post_huge(&app, "/internal/v1/leases", "").await;
    assert!(status.contains(" 401 "), "{status}");
    assert!(
        written < limit / 4,
        "wrote {written} bytes before the answer"
    );
    // A webhook's signature is in its body: read up to a webhook's size, not further.
    let (status, written) = post_huge(&app, "/v1/feedback/mailgun", "").await;
    assert!(status.contains(" 413 "), "{status}");
    assert!(
        written < limit / 4,
        "wrote {written} bytes before the answer"
    );
    // An authorised worker is held to its route's limit too.
    let (status, _) = post_huge(
        &app,
        "/internal/v1/leases",
        "Authorization: Bearer worker-secret-0123456789\r\n",
    )
    .await;
    assert!(status.contains(" 413 "), "{status}");
    still_well(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn csv_columns_fields_and_rows_are_bounded() {
    let app = spawn_app().await;
    let campaign =
        json!({"name": "x", "from": "news@example.com", "subject": "s", "html": "<p>x</p>"});
    let post = |csv: String| {
        let form = reqwest::multipart::Form::new()
            .text("campaign", campaign.to_string())
            .text("recipients", csv);
        app.client
            .post(app.url("/v1/campaigns"))
            .multipart(form)
            .send()
    };
    let wide = format!(
        "email,{}\n",
        (0..150)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let r = post(wide).await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("columns"));
    let long = format!(
        "email,bio\na@example.com,ok\nb@example.com,{}\n",
        "z".repeat(10_000)
    );
    let r = post(long).await.unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(text.contains("line 3") && text.contains("bio"), "{text}");
    still_well(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn retry_states_are_bounded() {
    let app = spawn_app().await;
    let id = app.create(&inline_campaign(recipients(2))).await;
    let many: Vec<&str> = std::iter::repeat_n("unknown", 2_000).collect();
    let r = app
        .post_json(
            &format!("/v1/campaigns/{id}/retry"),
            &json!({ "states": many }),
        )
        .await;
    assert_eq!(r.status(), 422);
    let r = app
        .post_json(
            &format!("/v1/campaigns/{id}/retry"),
            &json!({ "states": ["unknown", "unknown"] }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let plan = app
        .client
        .get(app.url(&format!(
            "/v1/campaigns/{id}/plan?finish_by=2099-01-01T00:00:00Z"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        plan.status(),
        400,
        "a plan a lifetime ahead is refused, not computed"
    );
    app.stop().await;
}

#[tokio::test]
async fn turning_the_sandbox_on_protects_the_next_send_and_refused_edits_keep_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conductor.toml");
    let root = dir.path().to_path_buf();
    let toml = move |extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{0}/c.db\"\n[bodies]\nurl = \"file://{0}/bodies\"\n\
             [campaigns]\ntemplates_dir = \"{1}\"\n[provider.outbox]\ndir = \"{0}/outbox\"\n{extra}",
            root.display(),
            templates_dir().display()
        )
    };
    std::fs::write(&file, toml("")).unwrap();
    let config = conductor::config::Config::load(Some(&file), Vec::new()).unwrap();
    let app = spawn_app_in(dir, config, Some(file.clone())).await;
    let send_at = chrono::Utc::now() + chrono::Duration::seconds(4);
    let mut c = inline_campaign(vec![
        json!({"email": "ok@example.com", "data": {"city": "Köln"}}),
        json!({"email": "real.person@customer.test", "data": {"city": "Köln"}}),
    ]);
    c["send_at"] = json!(send_at.to_rfc3339());
    let id = app.create(&c).await;
    std::fs::write(
        &file,
        toml("[safety]\nsandbox = true\nallow_domains = [\"example.com\"]\n"),
    )
    .unwrap();
    for _ in 0..100 {
        if app.config.borrow().safety.sandbox {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(app.config.borrow().safety.sandbox, "the edit applied live");
    only_the_allowed_one_was_sent(&app, &id).await;
    let outbox = crate::e2e::outbox(&app, &id);
    assert_eq!(
        outbox.keys().collect::<Vec<_>>(),
        ["ok@example.com"],
        "{outbox:?}"
    );

    // A restart-only edit carrying a password, and a broken one: refused, and no audit entry (served
    // by GET /v1/governor) or log holds the password.
    let sandbox = "[safety]\nsandbox = true\nallow_domains = [\"example.com\"]\n";
    let secret = "hunter2-secret";
    std::fs::write(
        &file,
        toml(sandbox).replace(
            &format!("sqlite://{}/c.db", root_of(&file)),
            &format!("postgres://user:{secret}@db.internal/prod"),
        ),
    )
    .unwrap();
    let g = audited_rejection(&app, "store").await;
    assert!(!g.contains(secret), "{g}");
    std::fs::write(
        &file,
        format!(
            "{}[governor]\nper_minute = \"postgres://u:{secret}@x\"\n",
            toml(sandbox)
        ),
    )
    .unwrap();
    let g = audited_rejection(&app, "per_minute").await;
    assert!(!g.contains(secret), "{g}");
    app.stop().await;
}

fn root_of(file: &std::path::Path) -> String {
    file.parent().unwrap().display().to_string()
}

/// Waits until the audit log has a refusal mentioning `what`; returns the whole governor document.
async fn audited_rejection(app: &TestApp, what: &str) -> String {
    for _ in 0..200 {
        let g = app.get_json("/v1/governor").await;
        let hit = g["changes"].as_array().into_iter().flatten().any(|e| {
            e["kind"] == "rejected" && e["new"].as_str().is_some_and(|n| n.contains(what))
        });
        if hit {
            return g.to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no refusal mentioning {what} was audited");
}

/// A send in doubt (the provider got it, its answer came after the timeout), then the one-click
/// unsubscribe from that very message, then an operator's retry of everything `unknown`: the
/// unsubscribed address is not mailed again; the others are.
#[tokio::test]
async fn unsubscribe_then_retry_never_mails_the_address_again() {
    use crate::sink::{send_to, Sink};
    use std::sync::atomic::Ordering;
    let (sink, base) = Sink::start().await;
    sink.answer_after_ms.store(1_500, Ordering::SeqCst);
    let app = spawn_app_with(|c| {
        send_to(c, &base);
        c.provider.timeout_ms = 300;
        c.unsubscribe.base_url = Some("https://mail.example.com".into());
        c.unsubscribe.secret = Some("unsubscribe-secret-for-tests-0123456789".into());
    })
    .await;
    let id = app.create(&inline_campaign(recipients(3))).await;
    let c = app
        .wait_for(&id, Duration::from_secs(60), is_completed)
        .await;
    assert_eq!(c["counts"]["unknown"], 3, "{c}");
    let first = sink.received.lock().unwrap().clone();
    assert_eq!(first.len(), 3, "each message reached the provider once");
    let r1 = first
        .iter()
        .find(|r| r.to.contains("<r1@example.com>"))
        .unwrap();
    let link = r1.list_unsubscribe.trim_matches(|c| c == '<' || c == '>');
    let token = link.strip_prefix("https://mail.example.com/u/").unwrap();
    let r = app
        .client
        .post(app.url(&format!("/u/{token}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    sink.answer_after_ms.store(0, Ordering::SeqCst);
    let r = app
        .post_json(
            &format!("/v1/campaigns/{id}/retry"),
            &json!({"states": ["unknown"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let c = app
        .wait_for(&id, Duration::from_secs(60), is_completed)
        .await;
    assert_eq!(
        (
            c["counts"]["sent"].as_i64(),
            c["counts"]["suppressed"].as_i64()
        ),
        (Some(2), Some(1)),
        "{c}"
    );
    let to_r1 = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.to.contains("<r1@example.com>"))
        .count();
    assert_eq!(
        to_r1, 1,
        "the unsubscribed address got only the message it unsubscribed from"
    );
    assert_eq!(sink.received.lock().unwrap().len(), 5);
    app.stop().await;
}

/// A `sender` process reads `[safety]` again while it runs: turned on in its config file, the sandbox
/// refuses the next stranger even though the conductor (whose config did not change) leased it.
#[tokio::test]
async fn a_sender_process_applies_a_safety_edit_to_its_next_send() {
    use tokio::io::AsyncBufReadExt;
    const SECRET: &str = "hostile-workers-secret-0123456789";
    let app = spawn_app_with(|c| {
        c.workers.embedded_sender = false;
        c.workers.secret = Some(SECRET.into());
    })
    .await;
    let root = app.dir.path().to_path_buf();
    let file = root.join("sender.toml");
    let toml = |extra: &str| {
        format!(
            "[bodies]\nurl = \"file://{0}/bodies\"\n[provider.outbox]\ndir = \"{0}/remote-outbox\"\n{extra}",
            root.display()
        )
    };
    std::fs::write(&file, toml("")).unwrap();
    let mut sender = tokio::process::Command::new(crate::distributed::binary("sender"))
        .args(["--conductor", &app.base, "--config", file.to_str().unwrap()])
        .env("CONDUCTOR__WORKERS__SECRET", SECRET)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = tokio::io::BufReader::new(sender.stderr.take().unwrap()).lines();
    // The edit must come after the sender has read its file once, or it would start sandboxed.
    said(&mut log, "sender started", 30).await;
    let mut c = inline_campaign(vec![
        json!({"email": "ok@example.com", "data": {"city": "Köln"}}),
        json!({"email": "real.person@customer.test", "data": {"city": "Köln"}}),
    ]);
    c["send_at"] = json!((chrono::Utc::now() + chrono::Duration::seconds(6)).to_rfc3339());
    let id = app.create(&c).await;
    std::fs::write(
        &file,
        toml("[safety]\nsandbox = true\nallow_domains = [\"example.com\"]\n"),
    )
    .unwrap();
    said(&mut log, "[safety] changed", 15).await;
    only_the_allowed_one_was_sent(&app, &id).await;
    let outbox = crate::e2e::outbox_in(&root.join("remote-outbox").join(&id));
    assert_eq!(
        outbox.keys().collect::<Vec<_>>(),
        ["ok@example.com"],
        "{outbox:?}"
    );
    sender.kill().await.unwrap();
    app.stop().await;
}

fn mailgun_post(key: &str, token: &str, event: &str) -> Value {
    let ts = chrono::Utc::now().timestamp().to_string();
    json!({
        "signature": {"timestamp": ts, "token": token,
                      "signature": conductor::domain::feedback::mailgun_signature(key, &ts, token)},
        "event-data": {"event": event, "recipient": "r1@example.com"},
    })
}

/// A rotated signing key applies at once; a signature is good for one post whatever its event, so a
/// captured `opened` cannot come back as `unsubscribed`.
#[tokio::test]
async fn webhook_secrets_apply_live_and_a_token_is_spent_on_any_event() {
    let app =
        spawn_app_with(|c| c.feedback.mailgun.signing_key = Some("key-old-0123456789".into()))
            .await;
    let post = |body: Value| {
        let app = &app;
        async move { app.post_json("/v1/feedback/mailgun", &body).await }
    };
    assert_eq!(
        post(mailgun_post("key-old-0123456789", "t1", "opened"))
            .await
            .status(),
        200
    );
    let mut replay = mailgun_post("key-old-0123456789", "t1", "unsubscribed");
    replay["event-data"]["event"] = json!("unsubscribed");
    assert_eq!(
        post(replay).await.status(),
        406,
        "the token was spent by the `opened` post"
    );
    let mut rotated = (**app.config.borrow()).clone();
    rotated.feedback.mailgun.signing_key = Some("key-new-0123456789".into());
    app.config.send_replace(std::sync::Arc::new(rotated));
    assert_eq!(
        post(mailgun_post("key-old-0123456789", "t2", "delivered"))
            .await
            .status(),
        401
    );
    assert_eq!(
        post(mailgun_post("key-new-0123456789", "t3", "delivered"))
            .await
            .status(),
        200
    );
    app.stop().await;
}

/// The campaign of `ok@example.com` and `real.person@customer.test` completed with the first sent
/// and the stranger failed by the sandbox.
async fn only_the_allowed_one_was_sent(app: &TestApp, id: &str) {
    let done = app
        .wait_for(id, Duration::from_secs(60), is_completed)
        .await;
    let counts = &done["counts"];
    assert_eq!(
        (counts["sent"].as_i64(), counts["failed"].as_i64()),
        (Some(1), Some(1)),
        "{done}"
    );
    let failed = app
        .get_json(&format!("/v1/campaigns/{id}/recipients?state=failed"))
        .await;
    let stranger = &failed["recipients"][0];
    assert_eq!(stranger["email"], "real.person@customer.test");
    assert!(
        stranger["reason"].as_str().unwrap().contains("sandbox"),
        "{failed}"
    );
}

/// Reads a process's log until a line contains `needle`; fails the test after `secs`.
async fn said(
    log: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    needle: &str,
    secs: u64,
) {
    let seen = tokio::time::timeout(Duration::from_secs(secs), async {
        while let Ok(Some(line)) = log.next_line().await {
            if line.contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the process did not log {needle:?}");
}
