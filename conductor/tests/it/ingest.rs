//! Streamed recipient lists through the API: a bad row deep in a list, a connection cut mid-upload,
//! an import cut off by a stop, duplicates, the draft → PUT recipients → start flow, and
//! `Idempotency-Key`.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::support::{expect_problem, list_form, spawn_app, spawn_app_in, test_config, TestApp};

fn campaign() -> Value {
    json!({"name": "Big", "from": "news@example.com", "subject": "Hi {{name}}", "html": "<p>{{city}}</p>"})
}

/// A CSV of `n` rows (`name` and `city` columns), line 1 the header.
fn csv(n: usize) -> String {
    std::iter::once("email,name,city\n".to_string())
        .chain((0..n).map(|i| format!("r{i}@example.com,R {i},Köln\n")))
        .collect()
}

/// Rows the store holds (recipients and their data), whatever their campaign's state (read from its file).
async fn stored(app: &TestApp) -> (i64, i64) {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}", app.dir.path().join("conductor.db").display());
    let mut db: sqlx::AnyConnection = sqlx::Connection::connect(&url).await.unwrap();
    // A recipient's data is a row of its own: a cleared list leaves neither.
    let recipients: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM recipients) + (SELECT count(*) FROM recipient_data)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    let campaigns: i64 = sqlx::query_scalar("SELECT count(*) FROM campaigns")
        .fetch_one(&mut db)
        .await
        .unwrap();
    (recipients, campaigns)
}

/// Waits (bounded) until the store holds no campaign and no recipient at all.
async fn until_nothing_is_stored(app: &TestApp) {
    let start = std::time::Instant::now();
    loop {
        let held = stored(app).await;
        if held == (0, 0) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still stored (recipients, campaigns): {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_bad_row_late_in_a_streamed_list_names_its_line_and_leaves_nothing() {
    let app = spawn_app().await;
    // Three chunks are stored before the bad row at line 25,002 is read.
    let mut list = csv(25_000);
    list.push_str("not-an-address,Late,Köln\n");
    list.push_str(&csv(10).replace("email,name,city\n", ""));
    let r = app
        .post_multipart(list_form(&campaign(), list, "text/csv"))
        .await;
    let p = expect_problem(r, 422, "/problems/validation").await;
    assert_eq!(p["errors"][0]["field"], "line 25002.email", "{p}");
    assert_eq!(app.campaign_count().await, 0, "no campaign is visible");
    until_nothing_is_stored(&app).await;

    // A row that cannot be read at all (NDJSON) is named the same way.
    let mut list: String = (0..12_000)
        .map(|i| format!("{{\"email\": \"n{i}@example.com\", \"data\": {{\"city\": \"Bonn\"}}}}\n"))
        .collect();
    list.push_str("{\"email\": \"x@example.com\", \"nmae\": \"typo\"}\n");
    let r = app
        .post_multipart(list_form(&campaign(), list, "application/x-ndjson"))
        .await;
    let p = expect_problem(r, 422, "/problems/invalid-csv").await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("recipients NDJSON line 12001"),
        "{p}"
    );
    until_nothing_is_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_connection_cut_mid_upload_leaves_nothing() {
    let app = spawn_app().await;
    let boundary = "XBOUNDARYX";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"campaign\"\r\nContent-Type: application/json\r\n\r\n{}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"recipients\"; filename=\"l.csv\"\r\nContent-Type: text/csv\r\n\r\n",
        campaign()
    );
    let sent = format!("{head}{}", csv(30_000));
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /v1/campaigns HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {}\r\n\r\n",
        sent.len() + 1_000_000
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp.write_all(sent.as_bytes()).await.unwrap();
    tcp.flush().await.unwrap();
    // The import is under way: the campaign exists, importing, and has stored rows.
    let start = std::time::Instant::now();
    loop {
        let list = app.get_json("/v1/campaigns").await;
        let importing = list["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["status"] == "importing" && c["counts"]["total"].as_i64() > Some(0));
        if importing {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tcp);
    until_nothing_is_stored(&app).await;
    assert_eq!(app.campaign_count().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_import_cut_off_by_a_stop_is_gone_after_restart() {
    let app = spawn_app().await;
    let dir = app.stop().await;
    {
        // What a process killed mid-import leaves: an importing campaign with some of its rows.
        use conductor::store::{SqlStore, Status, Store};
        let store = SqlStore::open(&format!(
            "sqlite://{}",
            dir.path().join("conductor.db").display()
        ))
        .await
        .unwrap();
        let c = conductor::domain::validate::validate(
            serde_json::from_value(campaign()).unwrap(),
            conductor::domain::validate::json_rows(
                (0..50)
                    .map(|i| conductor::domain::validate::RecipientIn {
                        email: format!("k{i}@example.com"),
                        name: None,
                        data: json!({"city": "Bonn"}).as_object().cloned(),
                    })
                    .collect(),
            ),
            &crate::support::templates_dir(),
            &Default::default(),
            Default::default(),
        )
        .unwrap();
        let opened = store
            .create_empty(&(&c).into(), 10, 1_000, Status::Importing, None)
            .await
            .unwrap();
        let conductor::store::Opened::New(half) = opened else {
            panic!("new")
        };
        store
            .import_chunk(&half.id, &c.recipients[..30], 1_000)
            .await
            .unwrap();
    }
    let config = test_config(dir.path());
    let app = spawn_app_in(dir, config, None).await;
    assert_eq!(app.campaign_count().await, 0, "not visible after restart");
    until_nothing_is_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_draft_takes_a_streamed_list_drops_duplicates_and_starts() {
    let app = spawn_app().await;
    let mut draft = campaign();
    draft["draft"] = json!(true);
    let r = app.post_json("/v1/campaigns", &draft).await;
    assert_eq!(r.status(), 201);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["status"], "draft");
    let id = c["id"].as_str().unwrap().to_string();
    let put = |body: String, media: &'static str| {
        app.client
            .put(app.url(&format!("/v1/campaigns/{id}/recipients")))
            .header("content-type", media)
            .body(body)
    };
    let start = app.act(&id, "start").await;
    expect_problem(start, 409, "/problems/conflict").await;

    // A first list, replaced by the second: the draft keeps only the last one.
    let r = put(csv(50), "text/csv").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let mut list: String = (0..12_000)
        .map(|i| format!("{{\"email\": \"n{i}@example.com\", \"name\": \"N\", \"data\": {{\"city\": \"Bonn\"}}}}\n"))
        .collect();
    // Duplicates, by canonical address, in the same chunk and across chunks.
    list.push_str("{\"email\": \"N5@Example.COM\", \"data\": {\"city\": \"Bonn\"}}\n");
    list.push_str("{\"email\": \"n11999@example.com\", \"data\": {\"city\": \"Bonn\"}}\n");
    list.push_str("{\"email\": \"n7@example.com\", \"data\": {\"city\": \"Bonn\"}}\n");
    let r = put(list, "application/x-ndjson").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["status"], "draft");
    assert_eq!(c["counts"]["total"], 12_000, "{c}");
    assert_eq!(c["duplicates_removed"], 3);
    assert_eq!(c["batches"], 120);

    let r = app.act(&id, "start").await;
    assert_eq!(r.status(), 200);
    let again = app.act(&id, "start").await;
    assert_eq!(again.status(), 200, "a retried start is answered the same");
    let done = app
        .wait_for(&id, Duration::from_secs(60), crate::support::is_completed)
        .await;
    assert_eq!(done["counts"]["sent"], 12_000, "{done}");
    let r = put(csv(5), "text/csv").send().await.unwrap();
    expect_problem(r, 409, "/problems/conflict").await;
    app.stop().await;
}

#[tokio::test]
async fn a_retried_create_with_its_idempotency_key_returns_the_first_campaign() {
    let app = spawn_app().await;
    let body = crate::support::inline_campaign(crate::support::recipients(20));
    let post = |key: &'static str, body: &Value| {
        app.client
            .post(app.url("/v1/campaigns"))
            .header("idempotency-key", key)
            .json(body)
            .send()
    };
    let first = post("create-1", &body).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = post("create-1", &body).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.campaign_count().await, 1, "nobody is mailed twice");

    let mut other = body.clone();
    other["name"] = json!("Another");
    expect_problem(
        post("create-1", &other).await.unwrap(),
        409,
        "/problems/conflict",
    )
    .await;
    // A streamed create replays the same way.
    let send = |key: &'static str| {
        app.client
            .post(app.url("/v1/campaigns"))
            .header("idempotency-key", key)
            .multipart(list_form(&campaign(), csv(300), "text/csv"))
            .send()
    };
    let a: Value = send("csv-1").await.unwrap().json().await.unwrap();
    let b = send("csv-1").await.unwrap();
    assert_eq!(b.status(), 200);
    assert_eq!(b.json::<Value>().await.unwrap()["id"], a["id"]);
    assert_eq!(app.campaign_count().await, 2);
    let bad = app
        .client
        .post(app.url("/v1/campaigns"))
        .header("idempotency-key", "")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_problem(bad, 422, "/problems/validation").await;
    app.stop().await;
}
