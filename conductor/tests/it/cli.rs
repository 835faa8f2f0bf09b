//! `conductor campaign …` against a running server (the client the binary uses), and API tokens.

use std::time::Duration;

use conductor::cli::{CliError, Client, Ending};

use crate::support::*;

fn template_dir(root: &std::path::Path) -> std::path::PathBuf {
    let t = root.join("spring");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("subject.hbs"), "Spring news for {{name}}\n").unwrap();
    std::fs::write(t.join("html.hbs"), "<p>Hi {{name}} in {{city}}</p>").unwrap();
    std::fs::write(t.join("text.hbs"), "Hi {{name}} in {{city}}").unwrap();
    t
}

fn csv(root: &std::path::Path, n: usize) -> std::path::PathBuf {
    let mut s = String::from("email,name,city\n");
    for i in 0..n {
        s.push_str(&format!("c{i}@example.com,Zoë {i},Köln\n"));
    }
    let p = root.join("list.csv");
    std::fs::write(&p, s).unwrap();
    p
}

#[tokio::test]
async fn create_list_watch_and_act_from_the_command_line_client() {
    let app = spawn_app().await;
    let files = tempfile::tempdir().unwrap();
    let client = Client::new(&app.base, None);
    let c = client
        .create(
            &template_dir(files.path()),
            &csv(files.path(), 12),
            "News <news@example.com>",
            None,
            None,
        )
        .await
        .unwrap();
    let id = c.id.clone();
    assert_eq!(c.name, "spring");
    let mut frames = 0;
    let end = tokio::time::timeout(Duration::from_secs(60), client.watch(&id, |_| frames += 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, Ending::Sent);
    assert!(frames >= 1);
    let listed = client.list().await.unwrap();
    let line = conductor::cli::line(&listed[0]);
    assert!(line.contains(&id) && line.contains("completed"), "{line}");
    // A bad list is refused with the server's reasons, row named.
    std::fs::write(
        files.path().join("bad.csv"),
        "email,name,city\nnot-an-address,A,B\n",
    )
    .unwrap();
    let e = client
        .create(
            &template_dir(files.path()),
            &files.path().join("bad.csv"),
            "news@example.com",
            None,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CliError::Refused { status: 422, detail, .. } if detail.contains("line 2")),
        "{e}"
    );
    let e = client
        .create(
            files.path(),
            &csv(files.path(), 1),
            "news@example.com",
            None,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CliError::Usage(m) if m.contains("subject.hbs")),
        "{e}"
    );
    // Acting on a finished campaign is refused, not ignored.
    assert!(matches!(
        client.act::<serde_json::Value>(&id, "resume").await,
        Err(CliError::Refused { .. })
    ));
    let unreachable = Client::new("http://127.0.0.1:9", None);
    assert!(matches!(
        unreachable.list().await,
        Err(CliError::Unreachable { .. })
    ));
    app.stop().await;
}

#[tokio::test]
async fn with_api_tokens_every_v1_route_needs_one() {
    let token = "cnd_test_token_0123456789abcdef";
    let app =
        spawn_app_with(|c| c.server.api_tokens = vec![conductor::http::auth::digest(token)]).await;
    let files = tempfile::tempdir().unwrap();
    let (t, list) = (template_dir(files.path()), csv(files.path(), 3));
    let anonymous = Client::new(&app.base, None);
    let e = anonymous
        .create(&t, &list, "news@example.com", None, None)
        .await
        .unwrap_err();
    assert!(matches!(e, CliError::Refused { status: 401, .. }), "{e}");
    let wrong = Client::new(&app.base, Some("cnd_wrong".into()));
    assert!(matches!(
        wrong
            .create(&t, &list, "news@example.com", None, None)
            .await,
        Err(CliError::Refused { status: 401, .. })
    ));
    // Reads need it too: the list, recipients, the governor and its audit log.
    for path in [
        "/v1/campaigns",
        "/v1/campaigns/x/recipients",
        "/v1/governor",
        "/v1/minutes",
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
    }
    // What says nothing about campaigns or recipients stays open.
    for path in ["/healthz", "/metrics", "/openapi.json", "/"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let client = Client::new(&app.base, Some(token.into()));
    assert_eq!(client.list().await.unwrap().len(), 0, "nothing was created");
    let c = client
        .create(&t, &list, "news@example.com", None, None)
        .await
        .unwrap();
    let id = c.id;
    let r = app
        .client
        .get(app.url(&format!("/v1/campaigns/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    let r = app.act(&id, "cancel").await;
    assert_eq!(r.status(), 401);
    let end = tokio::time::timeout(Duration::from_secs(60), client.watch(&id, |_| {}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, Ending::Sent);
    app.stop().await;
}

#[tokio::test]
async fn api_token_edits_apply_to_the_next_request() {
    let app = spawn_app().await;
    let token = "cnd_live_token_0123456789abcdef";
    let get = || app.client.get(app.url("/v1/campaigns")).send();
    assert_eq!(get().await.unwrap().status(), 200, "no tokens: open");
    let edit = |tokens: Vec<String>| {
        let mut c = (**app.config.borrow()).clone();
        c.server.api_tokens = tokens;
        app.config.send_replace(std::sync::Arc::new(c));
    };
    edit(vec![conductor::http::auth::digest(token)]);
    assert_eq!(
        get().await.unwrap().status(),
        401,
        "a token listed: needed at once"
    );
    let with_token = || {
        app.client
            .get(app.url("/v1/campaigns"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(with_token().await.unwrap().status(), 200);
    edit(vec![conductor::http::auth::digest(
        "cnd_another_token_0123456789",
    )]);
    assert_eq!(
        with_token().await.unwrap().status(),
        401,
        "a token taken off the list: refused at once"
    );
    app.stop().await;
}

/// The binary itself, `serve`ing with `[log] format = "json"`: every line on stderr is a JSON object,
/// from the start to the graceful stop.
#[test]
fn serve_logs_json_lines_when_configured() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conductor.toml");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{d}/c.db\"\n\
         [bodies]\nurl = \"file://{d}/bodies\"\n[provider.outbox]\ndir = \"{d}/outbox\"\n\
         [campaigns]\ntemplates_dir = \"{t}\"\n[log]\nformat = \"json\"\n",
        d = dir.path().display(),
        t = templates_dir().display()
    );
    std::fs::write(&file, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_conductor"))
        .args(["serve", "--config"])
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |wanted: &str| -> Vec<serde_json::Value> {
        let mut seen = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no {wanted:?} line; before it: {seen:?}"));
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            let done = v["message"] == wanted;
            seen.push(v);
            if done {
                return seen;
            }
        }
    };
    let start = next("conductor serving");
    let serving = start.last().unwrap();
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["target"], "conductor");
    let address = serving["address"].as_str().unwrap();
    assert!(
        address.starts_with("127.0.0.1:") && !address.ends_with(":0"),
        "{serving}"
    );
    assert!(serving["timestamp"]
        .as_str()
        .is_some_and(|t| t.contains('T')));
    // It is the server that logged: it answers on that address.
    let health = std::net::TcpStream::connect(address).is_ok();
    assert!(health, "nothing listens on {address}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    next("shutting down");
    assert!(child.wait().unwrap().success());
}

#[test]
fn an_unknown_log_format_is_refused_before_anything_starts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conductor"))
        .args(["migrate"])
        .env("CONDUCTOR__LOG__FORMAT", "xml")
        .env(
            "CONDUCTOR__STORE__URL",
            "sqlite:///nonexistent-dir/never.db",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: config:") && err.contains("xml") && err.contains("json"),
        "{err}"
    );
}

/// `conductor campaign watch ID` as a person or a CI job runs it: the binary's exit status says how
/// the send ended — 0 all sent, 3 completed with failures, 4 paused, 5 cancelled.
#[tokio::test]
async fn the_watch_command_exits_with_how_the_send_ended() {
    let app = spawn_app_with(|c| c.governor.per_minute = 120).await;
    let watch = |id: String| {
        let base = app.base.clone();
        async move {
            let out = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::process::Command::new(env!("CARGO_BIN_EXE_conductor"))
                    .args(["campaign", "watch", &id])
                    .env("CONDUCTOR_URL", base)
                    .env_remove("CONDUCTOR_TOKEN")
                    .stdin(std::process::Stdio::null())
                    .output(),
            )
            .await
            .expect("watch ends by itself")
            .unwrap();
            out.status.code()
        }
    };

    let sent = app.create(&inline_campaign(recipients(3))).await;
    assert_eq!(watch(sent).await, Some(0), "every recipient sent");

    let paused = app.create(&inline_campaign(recipients(200))).await;
    assert_eq!(app.act(&paused, "pause").await.status(), 200);
    assert_eq!(watch(paused.clone()).await, Some(4), "paused");
    assert_eq!(app.act(&paused, "cancel").await.status(), 200);
    assert_eq!(watch(paused).await, Some(5), "cancelled");

    // Every recipient failed at the lease (a sandbox that lists none of them): completed, not sent.
    let mut strict = (**app.config.borrow()).clone();
    strict.safety.sandbox = true;
    strict.safety.allow_domains = vec!["example.org".into()];
    let mut draft = inline_campaign(Vec::new());
    draft.as_object_mut().unwrap().remove("recipients");
    draft["draft"] = serde_json::json!(true);
    let r = app.post_json("/v1/campaigns", &draft).await;
    assert_eq!(r.status(), 201);
    let failing = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .client
        .put(app.url(&format!("/v1/campaigns/{failing}/recipients")))
        .header("content-type", "application/x-ndjson")
        .body(
            (0..3)
                .map(|i| {
                    format!(
                        "{{\"email\": \"f{i}@example.com\", \"data\": {{\"city\": \"Ulm\"}}}}\n"
                    )
                })
                .collect::<String>(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    app.config.send_replace(std::sync::Arc::new(strict));
    assert_eq!(app.act(&failing, "start").await.status(), 200);
    assert_eq!(watch(failing).await, Some(3), "completed with failures");
    app.stop().await;
}

/// The README's main job, `conductor demo`, as the binary runs it: a campaign is created, sent
/// through the outbox and summarised; every recipient's message is a file a mail client opens.
/// Started from a folder with no `templates/` (as a user starting it elsewhere than the repository
/// would), it uses the templates built into the binary.
#[test]
fn the_demo_command_sends_its_campaign_through_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("conductor.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{0}/c.db\"\n[bodies]\nurl = \"file://{0}/bodies\"\n\
             [provider.outbox]\ndir = \"{0}/outbox\"\n",
            dir.path().display(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conductor"))
        .args(["demo", "--recipients", "40", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" completed in "), "{stdout}");
    assert!(
        stdout.contains("sent 40 · failed 0 · unknown 0"),
        "{stdout}"
    );
    let campaigns: Vec<_> = std::fs::read_dir(dir.path().join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(campaigns.len(), 1, "{campaigns:?}");
    let mails = crate::e2e::outbox_in(&campaigns[0]);
    assert_eq!(mails.len(), 40);
    assert!(mails
        .values()
        .all(|m| m.contains("Content-Type: multipart/alternative")));
}

/// `conductor serve` killed with SIGKILL in the middle of a send, then started again on the same
/// files: nobody is lost and nobody is resent silently. What may have been under way at the kill is
/// `unknown`; everything else is sent, once.
#[tokio::test]
async fn a_conductor_killed_mid_send_and_restarted_loses_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let file = dir.path().join("conductor.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://{0}/c.db\"\n\
             [bodies]\nurl = \"file://{0}/bodies\"\n[provider]\ntimeout_ms = 1000\n\
             [provider.outbox]\ndir = \"{0}/outbox\"\n[campaigns]\ntemplates_dir = \"{1}\"\n\
             batch_size = 50\n[governor]\nper_minute = 3000\n[workers]\nlease_grace_ms = 1000\n",
            dir.path().display(),
            crate::support::templates_dir().display()
        ),
    )
    .unwrap();
    let serve = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_conductor"))
            .args(["serve", "--config"])
            .arg(&file)
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let client = reqwest::Client::new();
    let up = || async {
        let waited = std::time::Instant::now();
        while client.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "serve never came up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let campaign = |id: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .get(format!("{base}/v1/campaigns/{id}"))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };

    let mut first = serve();
    up().await;
    let r = client
        .post(format!("{base}/v1/campaigns"))
        .json(&inline_campaign(recipients(300)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let waited = std::time::Instant::now();
    while campaign(id.clone()).await["counts"]["sent"].as_i64() < Some(30) {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "nothing was sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();

    let _second = serve();
    up().await;
    let waited = std::time::Instant::now();
    let c = loop {
        let c = campaign(id.clone()).await;
        if c["status"] == "completed" {
            break c;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(90),
            "never completed: {c}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let k = &c["counts"];
    let (sent, unknown) = (k["sent"].as_i64().unwrap(), k["unknown"].as_i64().unwrap());
    assert_eq!(sent + unknown, 300, "every recipient sent or in doubt: {c}");
    assert_eq!(k["failed"], 0, "{c}");
    assert!(sent >= 30, "{c}");
    // Every sent recipient's message is in the outbox, and no message beyond those in doubt.
    let files = std::fs::read_dir(dir.path().join("outbox").join(&id))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "eml")
        })
        .count() as i64;
    assert!(
        (sent..=sent + unknown).contains(&files),
        "{files} messages for {sent} sent and {unknown} in doubt"
    );
}

/// The README's `campaign create` example as written: the shipped `templates/spring` folder and
/// `examples/spring.csv`, whose dotted headers (`offer.code`, `picks.0.title`) fill the template's
/// nested fields and loop, a row with fewer picks getting fewer.
#[tokio::test]
async fn the_readme_create_example_sends_the_shipped_csv_through_the_spring_template() {
    let app = spawn_app().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let client = Client::new(&app.base, None);
    let c = client
        .create(
            &root.join("templates/spring"),
            &root.join("examples/spring.csv"),
            "News <news@example.com>",
            None,
            None,
        )
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(60), client.watch(&c.id, |_| {}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, Ending::Sent);
    // Quoted-printable, unfolded: soft line breaks removed, `=3D` read back.
    let mails: std::collections::HashMap<String, String> = crate::e2e::outbox(&app, &c.id)
        .into_iter()
        .map(|(to, eml)| {
            (
                to,
                eml.replace("=\r\n", "")
                    .replace("=\n", "")
                    .replace("=3D", "="),
            )
        })
        .collect();
    assert_eq!(mails.len(), 4);
    let zoe = &mails["zoe@example.org"];
    for part in [
        "SPRING-ZM",
        "Garden chair",
        "Linen shirt",
        "Watering can",
        "https://shop.example.com/p/can",
    ] {
        assert!(zoe.contains(part), "{part} in {zoe}");
    }
    let jose = &mails["jose@example.org"];
    assert!(
        jose.contains("Straw hat") && !jose.contains("Garden chair"),
        "{jose}"
    );
    assert_eq!(
        jose.matches("class=\"pick\"").count(),
        1,
        "one pick, one row: {jose}"
    );
    let bjork = &mails["bjork@example.com"];
    assert!(
        bjork.contains("Hello there") && !bjork.contains("class=\"pick\""),
        "{bjork}"
    );
    app.stop().await;
}
