//! `POST /v1/campaigns/{id}/test` through the real API, against a wiremock Mailgun: only the given
//! addresses are mailed, the subject is marked, the minute ledger counts the tokens as tests, the
//! campaign's own progress does not move, and the sandbox and the suppression list refuse.

use std::sync::Arc;

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use conductor::startup::Hooks;
use sender::clock::ManualClock;

use crate::support::{expect_problem, spawn_app_with, spawn_full, test_config, TestApp};

/// A Mailgun that accepts everything as its documented answer says.
async fn mailgun() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mg.example.com/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "<20261206.1@mg.example.com>",
            "message": "Queued. Thank you."
        })))
        .mount(&server)
        .await;
    server
}

/// Each request's form fields.
async fn posted(server: &MockServer) -> Vec<Vec<(String, String)>> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| {
            url::form_urlencoded::parse(&r.body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .collect()
}

fn get<'a>(form: &'a [(String, String)], key: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// A draft with three recipients, never started.
async fn draft(app: &TestApp) -> String {
    let c: Value = app
        .post_json(
            "/v1/campaigns",
            &json!({"name": "Spring", "from": "News <news@example.com>",
                "subject": "Hi {{name}}", "html": "<p>Hello {{name}} from {{city}}</p>",
                "draft": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = c["id"].as_str().unwrap().to_string();
    let r = app
        .put_csv(
            &id,
            "email,name,city\nr0@example.com,Ada,Bonn\nr1@example.com,Bo,Köln\nr2@example.com,Cy,Ulm\n",
        )
        .await;
    assert_eq!(r.status(), 200);
    id
}

fn with_mailgun(base: &str) -> impl FnOnce(&mut conductor::config::Config) + '_ {
    move |c| {
        crate::sink::send_to(c, base);
        c.unsubscribe.base_url = Some("https://mail.example.com".into());
        c.unsubscribe.secret = Some("unsubscribe-secret-for-tests-0123456789".into());
    }
}

#[tokio::test]
async fn a_test_reaches_only_its_addresses_and_is_counted_as_a_test() {
    let server = mailgun().await;
    let app = spawn_app_with(with_mailgun(&server.uri())).await;
    let id = draft(&app).await;

    let r = app
        .post_json(
            &format!("/v1/campaigns/{id}/test"),
            &json!({"to": ["qa@example.com", "Editor <nope"]}),
        )
        .await;
    let p = expect_problem(r, 422, "/problems/validation").await;
    assert_eq!(p["errors"][0]["field"], "to[1]", "{p}");
    assert!(posted(&server).await.is_empty());

    // With the first recipient's data by default (the lowest id: ids do not follow the file).
    let page: Value = app
        .get_json(&format!("/v1/campaigns/{id}/recipients"))
        .await;
    let name = |i: usize| page["recipients"][i]["name"].as_str().unwrap().to_string();
    let city = |n: &str| match n {
        "Ada" => "Bonn",
        "Bo" => "Köln",
        _ => "Ulm",
    };
    let (first, second) = (name(0), name(1));
    let r = app
        .post_json(
            &format!("/v1/campaigns/{id}/test"),
            &json!({"to": ["qa@example.com", "editor@example.org"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["subject"], format!("[Test] Hi {first}"), "{report}");
    assert_eq!(report["results"][0]["outcome"], "sent", "{report}");
    assert_eq!(report["results"][1]["to"], "editor@example.org");
    assert_eq!(
        report["results"][1]["provider_id"], "20261206.1@mg.example.com",
        "{report}"
    );

    let forms = posted(&server).await;
    let to: Vec<&str> = forms.iter().map(|f| get(f, "to")).collect();
    assert_eq!(to, ["qa@example.com", "editor@example.org"]);
    for f in &forms {
        assert_eq!(get(f, "subject"), format!("[Test] Hi {first}"));
        let shown = format!("Hello {first} from {}", city(&first));
        assert!(get(f, "html").contains(&shown), "{f:?}");
        // The links of a test act on no one: the preview's stand-in, not the recipient's own.
        assert_eq!(
            get(f, "h:List-Unsubscribe"),
            "<https://mail.example.com/u/preview>"
        );
        // Its own campaign id, so feedback about a test finds no recipient of the campaign.
        assert!(
            get(f, "v:campaign_id").starts_with(&format!("{id}.test-")),
            "{f:?}"
        );
    }

    // Another recipient's data, by id; and data given in the request.
    let other = page["recipients"][1]["id"].as_i64().unwrap();
    let r = app
        .post_json(
            &format!("/v1/campaigns/{id}/test"),
            &json!({"to": ["qa@example.com"], "recipient_id": other}),
        )
        .await;
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["subject"], format!("[Test] Hi {second}"), "{report}");
    let r = app
        .post_json(
            &format!("/v1/campaigns/{id}/test"),
            &json!({"to": ["qa@example.com"],
                "recipient": {"email": "someone@example.net", "name": "Zoë", "data": {"city": "Graz"}}}),
        )
        .await;
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["subject"], "[Test] Hi Zoë", "{report}");
    let forms = posted(&server).await;
    assert_eq!(forms.len(), 4);
    assert!(get(&forms[3], "html").contains("Hello Zoë from Graz"));
    assert_eq!(get(&forms[3], "to"), "qa@example.com");
    let r = app
        .post_json(
            &format!("/v1/campaigns/{id}/test"),
            &json!({"to": ["qa@example.com"], "recipient": {"email": "x@example.net"}}),
        )
        .await;
    let p = expect_problem(r, 422, "/problems/validation").await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("missing field `city`"),
        "{p}"
    );

    // The campaign has not moved: still a draft, nobody of its own mailed.
    let c = app.get_json(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(c["status"], "draft");
    assert_eq!(c["counts"]["sent"], 0, "{c}");
    assert_eq!(c["counts"]["requests"], 0, "{c}");
    // The ledger has them, as tests and as the account's.
    let minutes = |scope: &'static str| {
        let app = &app;
        async move {
            let m: Value = app.get_json(&format!("/v1/minutes?scope={scope}")).await;
            m["minutes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["sent"].as_i64().unwrap())
                .sum::<i64>()
        }
    };
    assert_eq!(minutes("test").await, 4);
    assert_eq!(minutes("global").await, 4);
    app.stop().await;
}

#[tokio::test]
async fn the_sandbox_and_the_suppression_list_refuse_a_test() {
    let server = mailgun().await;
    let app = spawn_app_with(|c| {
        with_mailgun(&server.uri())(c);
        c.safety.sandbox = true;
        c.safety.allow_domains = vec!["example.com".into()];
    })
    .await;
    let id = draft(&app).await;
    let r = app
        .post_json(
            &format!("/v1/campaigns/{id}/test"),
            &json!({"to": ["qa@example.com", "ceo@gmail.com"]}),
        )
        .await;
    let p = expect_problem(r, 422, "/problems/validation").await;
    assert_eq!(p["errors"][0]["field"], "to[1]", "{p}");
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("sandbox"),
        "{p}"
    );
    assert!(posted(&server).await.is_empty(), "nobody is mailed");

    // An address that unsubscribed is refused by any path, tests too.
    let first: Value = app
        .get_json(&format!("/v1/campaigns/{id}/recipients"))
        .await;
    let rid = first["recipients"][0]["id"].as_i64().unwrap();
    let links = app.config.borrow().unsubscribe.links().unwrap();
    let token = links.token(&id, rid);
    let r = app
        .client
        .post(app.url(&format!("/u/{token}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = app
        .post_json(
            &format!("/v1/campaigns/{id}/test"),
            &json!({"to": ["R0@example.com"]}),
        )
        .await;
    let p = expect_problem(r, 422, "/problems/validation").await;
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("suppressed"),
        "{p}"
    );
    assert!(posted(&server).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_test_takes_the_minutes_tokens_whole_or_waits_for_the_next_minute() {
    let server = mailgun().await;
    // Ten seconds into a minute, on a clock that only moves when told.
    let minute = 1_700_000_040_000;
    let clock = Arc::new(ManualClock::new(minute + 10_000));
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    with_mailgun(&server.uri())(&mut config);
    config.governor.per_minute = 3;
    let app = spawn_full(dir, config, None, Hooks::default(), clock.clone()).await;
    let id = draft(&app).await;
    let test = format!("/v1/campaigns/{id}/test");
    let r = app
        .post_json(&test, &json!({"to": ["a@example.com", "b@example.com"]}))
        .await;
    assert_eq!(r.status(), 200);
    // One token is left this minute: a test of two is refused whole, and nothing is sent.
    let r = app
        .post_json(&test, &json!({"to": ["c@example.com", "d@example.com"]}))
        .await;
    assert_eq!(r.headers()["retry-after"], "50");
    expect_problem(r, 429, "/problems/rate-limited").await;
    assert_eq!(posted(&server).await.len(), 2);
    // The next minute has its own three.
    clock.set(minute + 60_000);
    let r = app
        .post_json(&test, &json!({"to": ["c@example.com", "d@example.com"]}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(posted(&server).await.len(), 4);
    let m: Value = app
        .get_json("/v1/minutes?scope=test&since=2023-11-14T22:00:00Z")
        .await;
    let per_minute: Vec<(i64, i64)> = m["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["granted"].as_i64().unwrap(), m["sent"].as_i64().unwrap()))
        .collect();
    assert_eq!(per_minute, [(2, 2), (2, 2)], "{m}");
    app.stop().await;
}
