//! Every bad input answers 4xx problem+json naming what is wrong, and stores nothing.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::support::*;

async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(
        app.campaign_count().await,
        0,
        "a refused campaign must not be stored"
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_with_its_position() {
    let app = spawn_app().await;
    let r = app
        .client
        .post(app.url("/v1/campaigns"))
        .header("content-type", "application/json")
        .body("{\"name\": \"x\",\n \"from\": }")
        .send()
        .await
        .unwrap();
    let p = expect_problem(r, 400, "/problems/invalid-json").await;
    assert!(
        p["detail"].as_str().unwrap().starts_with("line 2, column"),
        "{p}"
    );
    // Well-formed but the wrong shape: a 422 that names the field.
    let r = app
        .post_json(
            "/v1/campaigns",
            &json!({"name": "x", "from": "a@example.com", "recipients": [], "colour": 1}),
        )
        .await;
    let p = expect_problem(r, 422, "/problems/validation").await;
    assert!(p["detail"].as_str().unwrap().contains("colour"), "{p}");
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_template_name() {
    let app = spawn_app().await;
    for name in ["no-such-template", "../../etc"] {
        let mut c = inline_campaign(recipients(1));
        let o = c.as_object_mut().unwrap();
        o.remove("subject");
        o.remove("html");
        o.insert("template".into(), json!(name));
        let p = expect_problem(
            app.post_json("/v1/campaigns", &c).await,
            422,
            "/problems/unknown-template",
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains(name), "{p}");
    }
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn template_syntax_error_names_line_and_column() {
    let app = spawn_app().await;
    let mut c = inline_campaign(recipients(2));
    c["html"] = json!("<p>ok</p>\n<p>{{#if name}}x{{/each}}</p>");
    let p = expect_problem(
        app.post_json("/v1/campaigns", &c).await,
        422,
        "/problems/template-syntax",
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("html line 2, column"),
        "{p}"
    );
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn missing_field_names_recipient_row_and_field() {
    let app = spawn_app().await;
    let mut rs = recipients(3);
    rs[2]["data"] = json!({});
    let p = expect_problem(
        app.post_json("/v1/campaigns", &inline_campaign(rs)).await,
        422,
        "/problems/validation",
    )
    .await;
    let e = &p["errors"][0];
    assert_eq!(e["field"], "recipients[2] (r2@example.com)", "{p}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("missing field `city`"),
        "{p}"
    );
    assert_eq!(p["errors"].as_array().unwrap().len(), 1);
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn invalid_or_empty_email() {
    let app = spawn_app().await;
    for (bad, why) in [
        ("not-an-address", "has no @"),
        ("", "is empty"),
        ("a@b", "no dot"),
    ] {
        let mut rs = recipients(2);
        rs[1]["email"] = json!(bad);
        let p = expect_problem(
            app.post_json("/v1/campaigns", &inline_campaign(rs)).await,
            422,
            "/problems/validation",
        )
        .await;
        assert_eq!(p["errors"][0]["field"], "recipients[1].email", "{p}");
        assert!(
            p["errors"][0]["message"].as_str().unwrap().contains(why),
            "{p}"
        );
    }
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn header_injection_is_refused_everywhere() {
    let app = spawn_app().await;
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|c| c["from"] = json!("News <news@example.com>\r\nBcc: all@example.com")),
            "from",
        ),
        (
            Box::new(|c| c["reply_to"] = json!("a@example.com\nBcc: b@example.com")),
            "reply_to",
        ),
        (
            Box::new(|c| c["recipients"][0]["name"] = json!("Eve\r\nBcc: all@example.com")),
            "recipients[0].name",
        ),
        (
            Box::new(|c| {
                c["recipients"][0]["data"]["city"] = json!("Köln\r\nBcc: all@example.com")
            }),
            "recipients[0] (r0@example.com)",
        ),
    ];
    for (mutate, field) in cases {
        let mut c = inline_campaign(recipients(2));
        c["subject"] = json!("Hello {{name}} in {{city}}");
        mutate(&mut c);
        let p = expect_problem(
            app.post_json("/v1/campaigns", &c).await,
            422,
            "/problems/validation",
        )
        .await;
        assert_eq!(p["errors"][0]["field"], field, "{p}");
        assert!(
            p["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("header injection"),
            "{p}"
        );
    }
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn empty_recipient_list() {
    let app = spawn_app().await;
    expect_problem(
        app.post_json("/v1/campaigns", &inline_campaign(vec![]))
            .await,
        422,
        "/problems/no-recipients",
    )
    .await;
    let mut c = inline_campaign(vec![]);
    c.as_object_mut().unwrap().remove("recipients");
    let p = expect_problem(
        app.post_json("/v1/campaigns", &c).await,
        422,
        "/problems/validation",
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "recipients");
    assert_nothing_stored(&app).await;
    app.stop().await;
}

fn multipart(campaign: &Value, csv: &str) -> reqwest::multipart::Form {
    list_form(campaign, csv.to_string(), "text/csv")
}

fn csv_campaign() -> Value {
    json!({"name": "CSV", "from": "news@example.com", "subject": "Hi {{name}}", "html": "<p>{{city}}</p>"})
}

/// Dotted headers build nested data (a template reads `{{offer.code}}` and loops over `picks`); a
/// header that cannot be one shape is refused naming its columns, and nothing is stored.
#[tokio::test]
async fn csv_headers_with_dots_build_nested_data_or_are_refused_naming_the_column() {
    let app = spawn_app().await;
    let campaign = json!({"name": "Nested", "from": "news@example.com",
        "subject": "{{offer.code}} for {{name}}",
        "html": "<p>{{#each picks}}[{{@index}}:{{title}}]{{/each}}</p>"});
    let list = "email,name,offer.code,picks.0.title,picks.1.title\n\
                a@example.com,A,SPRING,Chair,Shirt\n\
                b@example.com,B,SUMMER,Hat,\n";
    let r = app.post_multipart(multipart(&campaign, list)).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    app.wait_for(id, std::time::Duration::from_secs(30), is_completed)
        .await;
    let mails = crate::e2e::outbox(&app, id);
    let (a, b) = (&mails["a@example.com"], &mails["b@example.com"]);
    assert!(a.contains("Subject: SPRING for A"), "{a}");
    assert!(a.contains("[0:Chair][1:Shirt]"), "{a}");
    assert!(
        b.contains("[0:Hat]</p>"),
        "the empty second pick is left out: {b}"
    );

    let before = app.campaign_count().await;
    let shapeless = "email,offer,offer.code\na@example.com,x,y\n";
    let r = app.post_multipart(multipart(&campaign, shapeless)).await;
    let p = expect_problem(r, 422, "/problems/invalid-csv").await;
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("column `offer.code`"), "{detail}");
    assert_eq!(
        app.campaign_count().await,
        before,
        "nothing half-made is listed"
    );
    app.stop().await;
}

#[tokio::test]
async fn csv_without_email_column_or_with_a_ragged_row() {
    let app = spawn_app().await;
    let r = app
        .post_multipart(multipart(&csv_campaign(), "name,city\nA,Köln\n"))
        .await;
    let p = expect_problem(r, 422, "/problems/invalid-csv").await;
    assert!(
        p["detail"].as_str().unwrap().contains("no `email` column"),
        "{p}"
    );
    let r = app
        .post_multipart(multipart(
            &csv_campaign(),
            "email,name,city\na@example.com,A,Köln\n\nb@example.com,B\n",
        ))
        .await;
    let p = expect_problem(r, 422, "/problems/invalid-csv").await;
    assert_eq!(
        p["detail"],
        "recipients CSV line 4: 2 fields where the header has 3"
    );
    // A bad address in a CSV names its line.
    let r = app
        .post_multipart(multipart(&csv_campaign(), "email,city\nnope,Köln\n"))
        .await;
    let p = expect_problem(r, 422, "/problems/validation").await;
    assert_eq!(p["errors"][0]["field"], "line 2.email");
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    // An inline list is limited to 256 KiB, an uploaded one to 384 KiB.
    let app = spawn_app_with(|c| c.server.max_upload_bytes = 384 * 1024).await;
    let big = inline_campaign(recipients(6_000));
    expect_problem(
        app.post_json("/v1/campaigns", &big).await,
        413,
        "/problems/payload-too-large",
    )
    .await;
    let csv: String = std::iter::once("email,city\n".to_string())
        .chain((0..20_000).map(|i| format!("r{i}@example.com,Köln\n")))
        .collect();
    let r = app.post_multipart(multipart(&csv_campaign(), &csv)).await;
    expect_problem(r, 413, "/problems/payload-too-large").await;
    assert_nothing_stored(&app).await;
    // The small JSON routes answer their limit, and bytes that are not JSON, as problems too.
    let padded = json!({"per_minute": 5, "pad": "x".repeat(70 * 1024)});
    let r = app
        .client
        .put(app.url("/v1/campaigns/any"))
        .json(&padded)
        .send()
        .await
        .unwrap();
    expect_problem(r, 413, "/problems/payload-too-large").await;
    let r = app
        .client
        .post(app.url("/v1/campaigns/any/retry"))
        .header("content-type", "application/json")
        .body("{\"states\": [")
        .send()
        .await
        .unwrap();
    expect_problem(r, 400, "/problems/invalid-json").await;
    app.stop().await;
}

#[tokio::test]
async fn a_part_out_of_place_after_the_campaign_leaves_nothing() {
    // Each of these ends the request once the `campaign` part has opened a campaign.
    let app = spawn_app().await;
    let campaign = || {
        reqwest::multipart::Part::text(csv_campaign().to_string())
            .mime_str("application/json")
            .unwrap()
    };
    let stray = reqwest::multipart::Form::new()
        .part("campaign", campaign())
        .text("extra", "x");
    let list_as_image = reqwest::multipart::Form::new()
        .part("campaign", campaign())
        .part(
            "recipients",
            reqwest::multipart::Part::bytes(b"email\na@example.com\n".to_vec())
                .mime_str("image/png")
                .unwrap(),
        );
    let no_list = reqwest::multipart::Form::new().part("campaign", campaign());
    for (form, detail) in [
        (stray, "unexpected part `extra`"),
        (list_as_image, "CSV (text/csv) or NDJSON"),
        (no_list, "`recipients` part is required"),
    ] {
        let r = app.post_multipart(form).await;
        let p = expect_problem(r, 422, "/problems/validation").await;
        assert!(p.to_string().contains(detail), "{detail:?} not in {p}");
        assert_nothing_stored(&app).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn other_media_types_methods_and_paths() {
    let app = spawn_app().await;
    let r = app
        .client
        .post(app.url("/v1/campaigns"))
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    expect_problem(r, 415, "/problems/unsupported-media-type").await;
    let r = app
        .client
        .get(app.url("/v1/campaigns/nope"))
        .send()
        .await
        .unwrap();
    expect_problem(r, 404, "/problems/not-found").await;
    let r = app
        .client
        .delete(app.url("/v1/campaigns"))
        .send()
        .await
        .unwrap();
    expect_problem(r, 405, "/problems/method-not-allowed").await;
    let r = app
        .client
        .get(app.url("/v1/minutes?since=yesterday"))
        .send()
        .await
        .unwrap();
    let p = expect_problem(r, 400, "/problems/invalid-query").await;
    assert!(p["detail"].as_str().unwrap().contains("since"));
    let r = app
        .client
        .get(app.url("/v1/minutes?scope=user:x"))
        .send()
        .await
        .unwrap();
    let p = expect_problem(r, 400, "/problems/invalid-query").await;
    assert!(p["detail"].as_str().unwrap().contains("scope"), "{p}");
    let r = app.client.get(app.url("/nowhere")).send().await.unwrap();
    expect_problem(r, 404, "/problems/not-found").await;
    app.stop().await;
}

#[tokio::test]
async fn duplicates_are_dropped_and_counted_not_refused() {
    let app = spawn_app().await;
    let mut rs = recipients(3);
    rs.push(json!({"email": "R1@EXAMPLE.com", "name": "Dup", "data": {"city": "x"}}));
    let r = app.post_json("/v1/campaigns", &inline_campaign(rs)).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let c: Value = r.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/campaigns/{}", c["id"].as_str().unwrap())
    );
    assert_eq!(c["counts"]["total"], 3);
    assert_eq!(c["duplicates_removed"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_sandbox_refuses_any_recipient_it_does_not_list() {
    let app = spawn_app_with(|c| {
        c.safety.sandbox = true;
        c.safety.allow_domains = vec!["example.com".into()];
    })
    .await;
    let mut rs = recipients(3);
    rs[2]["email"] = json!("real.person@gmail.com");
    let p = expect_problem(
        app.post_json("/v1/campaigns", &inline_campaign(rs)).await,
        422,
        "/problems/validation",
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "recipients[2].email", "{p}");
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("sandbox"),
        "{p}"
    );
    assert_nothing_stored(&app).await;
    // The allowed ones go through.
    let id = app.create(&inline_campaign(recipients(3))).await;
    let c = app
        .wait_for(&id, std::time::Duration::from_secs(30), |c| {
            c["status"] == "completed"
        })
        .await;
    assert_eq!(c["counts"]["sent"], 3, "{c}");
    app.stop().await;
}

#[tokio::test]
async fn a_retry_on_request_queues_the_failed_again_and_they_are_sent() {
    let app = spawn_app().await;
    let mut draft = csv_campaign();
    draft["draft"] = json!(true);
    let c: Value = app
        .post_json("/v1/campaigns", &draft)
        .await
        .json()
        .await
        .unwrap();
    let id = c["id"].as_str().unwrap().to_string();
    let r = app
        .put_csv(
            &id,
            "email,city\nr0@example.com,Bonn\nr1@example.com,Köln\nr2@example.com,Ulm\n",
        )
        .await;
    assert_eq!(r.status(), 200);
    // A sandbox turned on before the start fails every one of them at the lease, unsent.
    let mut strict = (**app.config.borrow()).clone();
    strict.safety.sandbox = true;
    strict.safety.allow_domains = vec!["example.org".into()];
    app.config.send_replace(Arc::new(strict));
    assert_eq!(app.act(&id, "start").await.status(), 200);
    let c = app
        .wait_for(&id, std::time::Duration::from_secs(30), is_completed)
        .await;
    assert_eq!(
        (c["counts"]["failed"].as_i64(), c["counts"]["sent"].as_i64()),
        (Some(3), Some(0)),
        "{c}"
    );

    let mut open = (**app.config.borrow()).clone();
    open.safety.sandbox = false;
    app.config.send_replace(Arc::new(open));
    let r = app
        .post_json(
            &format!("/v1/campaigns/{id}/retry"),
            &json!({"states": ["failed"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["requeued"], 3, "{body}");
    assert_eq!(body["campaign"]["status"], "running", "{body}");
    let c = app
        .wait_for(&id, std::time::Duration::from_secs(30), |c| {
            c["status"] == "completed" && c["counts"]["sent"] == 3
        })
        .await;
    assert_eq!(c["counts"]["failed"], 0, "{c}");
    assert_eq!(crate::e2e::outbox(&app, &id).len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn recipients_are_listed_by_state_in_pages_and_retry_requests_are_checked() {
    let app = spawn_app().await;
    let id = app.create(&inline_campaign(recipients(5))).await;
    app.wait_for(&id, std::time::Duration::from_secs(30), is_completed)
        .await;
    let page = app
        .get_json(&format!("/v1/campaigns/{id}/recipients?state=sent&limit=2"))
        .await;
    assert_eq!(page["recipients"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!(page["recipients"][0]["email"], "r0@example.com");
    assert_eq!(page["recipients"][0]["state"], "sent");
    let after = page["next_after"].as_i64().unwrap();
    let rest = app
        .get_json(&format!(
            "/v1/campaigns/{id}/recipients?state=sent&after={after}&limit=10"
        ))
        .await;
    assert_eq!(rest["recipients"].as_array().unwrap().len(), 3, "{rest}");
    assert!(rest["next_after"].is_null());
    let none = app
        .get_json(&format!("/v1/campaigns/{id}/recipients?state=unknown"))
        .await;
    assert!(none["recipients"].as_array().unwrap().is_empty());

    let get = |path: String| {
        let app = &app;
        async move { app.client.get(app.url(&path)).send().await.unwrap() }
    };
    expect_problem(
        get(format!("/v1/campaigns/{id}/recipients?state=lost")).await,
        400,
        "/problems/invalid-query",
    )
    .await;
    expect_problem(
        get(format!("/v1/campaigns/{id}/recipients?limit=0")).await,
        400,
        "/problems/invalid-query",
    )
    .await;
    expect_problem(
        get(format!("/v1/campaigns/{id}/recipients?after=abc")).await,
        400,
        "/problems/invalid-query",
    )
    .await;
    // A parameter given twice is refused as a problem document by every route that takes a query,
    // naming the parameter (schemathesis found axum's plain text here).
    for path in [
        format!("/v1/campaigns/{id}/recipients?limit=5&limit=6"),
        "/v1/minutes?since=2026-01-01T00:00:00Z&since=2026-01-02T00:00:00Z".to_string(),
        format!("/v1/campaigns/{id}/plan?finish_by=x&finish_by=y"),
    ] {
        let name = path
            .rsplit('&')
            .next()
            .unwrap()
            .split('=')
            .next()
            .unwrap()
            .to_string();
        let p = expect_problem(get(path).await, 400, "/problems/invalid-query").await;
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("duplicate field `{name}`")),
            "{p}"
        );
    }
    expect_problem(
        get("/v1/campaigns/nope/recipients".to_string()).await,
        404,
        "/problems/not-found",
    )
    .await;

    let retry = |body: Value| {
        let app = &app;
        let id = id.clone();
        async move {
            app.post_json(&format!("/v1/campaigns/{id}/retry"), &body)
                .await
        }
    };
    expect_problem(
        retry(json!({"states": ["sent"]})).await,
        422,
        "/problems/validation",
    )
    .await;
    expect_problem(
        retry(json!({"states": []})).await,
        422,
        "/problems/validation",
    )
    .await;
    expect_problem(
        retry(json!({"state": "unknown"})).await,
        422,
        "/problems/validation",
    )
    .await;
    let r = retry(json!({"states": ["unknown", "failed"]})).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["requeued"], 0, "{body}");
    assert_eq!(body["campaign"]["status"], "completed", "nothing to retry");
    app.stop().await;
}

#[tokio::test]
async fn pacing_and_schedule_fields_are_checked_and_named() {
    let app = spawn_app().await;
    for (field, value, says) in [
        ("per_minute", json!(0), "at least 1"),
        ("per_minute", json!(-5), "per_minute"),
        ("priority", json!(0), "between 1 and 100"),
        ("priority", json!(101), "between 1 and 100"),
        ("send_at", json!("next tuesday"), "RFC 3339"),
        ("window", json!({"hours": "9-5"}), "HH:MM"),
        (
            "window",
            json!({"hours": "09:00-17:00", "timezone": "Mars/Olympus"}),
            "IANA",
        ),
        (
            "window",
            json!({"hours": "09:00-17:00", "days": ["funday"]}),
            "funday",
        ),
        (
            "window",
            json!({"hours": "09:00-17:00", "colour": "red"}),
            "colour",
        ),
    ] {
        let mut c = inline_campaign(recipients(2));
        c[field] = value.clone();
        let r = app.post_json("/v1/campaigns", &c).await;
        assert_eq!(r.status(), 422, "{field} = {value}");
        let p: Value = r.json().await.unwrap();
        assert!(p.to_string().contains(says), "{field} = {value}: {p}");
    }
    assert_nothing_stored(&app).await;
    // Good values are stored and shown.
    let mut c = inline_campaign(recipients(2));
    c["per_minute"] = json!(120);
    c["priority"] = json!(7);
    c["send_at"] = json!("2030-01-01T09:00:00+01:00");
    c["window"] =
        json!({"hours": "09:00-17:00", "timezone": "Europe/Berlin", "days": ["mon", "tue"]});
    let id = app.create(&c).await;
    let got = app.get_json(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(got["per_minute"], 120);
    assert_eq!(got["priority"], 7);
    assert_eq!(got["send_at"], "2030-01-01T08:00:00.000Z");
    assert_eq!(got["window"]["timezone"], "Europe/Berlin");
    // Scheduled for 2030: nothing goes out, and the plan says it cannot finish by tomorrow.
    let plan = app
        .get_json(&format!(
            "/v1/campaigns/{id}/plan?finish_by={}",
            (chrono::Utc::now() + chrono::Duration::days(1))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
        .await;
    assert_eq!(plan["finishes"], false, "{plan}");
    assert!(plan["rate_needed_per_minute"].is_null(), "{plan}");
    for bad in ["", "?finish_by=soon"] {
        let r = app
            .client
            .get(app.url(&format!("/v1/campaigns/{id}/plan{bad}")))
            .send()
            .await
            .unwrap();
        expect_problem(r, 400, "/problems/invalid-query").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = spawn_app().await;
    let doc = app.get_json("/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/campaigns",
        "/v1/campaigns/{id}",
        "/v1/campaigns/{id}/{action}",
        "/v1/campaigns/{id}/recipients",
        "/v1/campaigns/{id}/start",
        "/v1/campaigns/{id}/retry",
        "/v1/campaigns/{id}/plan",
        "/v1/campaigns/{id}/events",
        "/v1/minutes",
        "/v1/governor",
        "/v1/feedback/{provider}",
        "/u/{token}",
        "/metrics",
        "/",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not described");
    }
    // Every problem type the server answers with is listed, in the schema made from the type.
    let kinds = doc["components"]["schemas"]["ProblemType"]["enum"]
        .as_array()
        .expect("ProblemType is a string enum");
    for kind in [
        "/problems/validation",
        "/problems/upload-cut-off",
        "/problems/invalid-query",
        "/problems/unauthorised",
    ] {
        assert!(kinds.contains(&json!(kind)), "{kind}");
    }
    // Answers are described by the generated schemas of the types the handlers return.
    let answer = |path: &str, method: &str| {
        doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
            ["$ref"]
            .clone()
    };
    assert_eq!(
        answer("/v1/campaigns/{id}", "get"),
        "#/components/schemas/CampaignView"
    );
    assert_eq!(
        answer("/v1/governor", "get"),
        "#/components/schemas/GovernorView"
    );
    let view = &doc["components"]["schemas"]["CampaignView"]["properties"];
    assert!(
        view["counts"].is_object() && view["eta"].is_object(),
        "{view}"
    );
    app.stop().await;
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// Fifty pollers at once cost one read of the campaign; what a client does itself shows at once.
#[tokio::test]
async fn pollers_share_one_view_and_see_their_own_actions_at_once() {
    let app = spawn_app().await;
    let mut c = inline_campaign(recipients(3));
    // Held until 2030: it stays running with nothing sent, whatever the test's pace.
    c["send_at"] = json!("2030-01-01T09:00:00Z");
    let id = app.create(&c).await;
    let path = format!("/v1/campaigns/{id}");
    let metrics = || async {
        let r = app.client.get(app.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    };
    let before = metrics().await;
    let bodies = futures::future::join_all((0..50).map(|_| async {
        let r = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        r.text().await.unwrap()
    }))
    .await;
    let after = metrics().await;
    let served = counter(&after, "conductor_campaign_views_served_total")
        - counter(&before, "conductor_campaign_views_served_total");
    let computed = counter(&after, "conductor_campaign_views_computed_total")
        - counter(&before, "conductor_campaign_views_computed_total");
    assert_eq!(served, 50);
    // One, or two if the fifty straddled the moment a view goes stale.
    assert!(
        (1..=2).contains(&computed),
        "computed {computed} views for 50 requests"
    );
    let first: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(first["status"], "running");
    assert_eq!(first["counts"]["total"], 3);
    assert!(bodies
        .iter()
        .all(|b| serde_json::from_str::<Value>(b).unwrap()["id"] == id));

    // The view is dropped by every change made here: no stale answer after one's own action.
    assert_eq!(app.act(&id, "pause").await.status(), 200);
    assert_eq!(app.get_json(&path).await["status"], "paused");
    assert_eq!(app.act(&id, "resume").await.status(), 200);
    assert_eq!(app.get_json(&path).await["status"], "running");
    let r = app
        .client
        .put(app.url(&path))
        .json(&json!({"per_minute": 77}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.get_json(&path).await["per_minute"], 77);
    // An unknown campaign is a problem every time, not a remembered one.
    for _ in 0..2 {
        let r = app
            .client
            .get(app.url("/v1/campaigns/nope"))
            .send()
            .await
            .unwrap();
        expect_problem(r, 404, "/problems/not-found").await;
    }
}

/// `POST /v1/preview`: a named template and an inline one rendered for one recipient as they would
/// be sent, with their headers and warnings; nothing is created, and a recipient the template
/// cannot render is refused as creation would refuse it.
#[tokio::test]
async fn a_preview_renders_one_recipient_and_creates_nothing() {
    let app = spawn_app().await;
    let recipient = json!({"email": "zoe@example.org", "name": "Zoë", "data": {
        "city": "Köln", "currency": "EUR",
        "offer": {"code": "SPRING-ZM", "percent": 20, "until": "30 April"},
        "picks": [{"title": "Garden chair", "price": 89.0, "url": "https://shop.example.com/p/chair"}]}});
    let named = json!({"campaign": {"name": "P", "from": "News <news@example.com>", "template": "spring"},
                       "recipient": recipient});
    let r = app.post_json("/v1/preview", &named).await;
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["subject"], "Zoë, 20% off this spring, until 30 April");
    assert_eq!(p["css_inlined"], true);
    let html = p["html"].as_str().unwrap();
    assert!(html.contains("Garden chair</a>, 89 EUR"), "{html}");
    assert!(html.contains("<td class=\"pick\" style=\""), "{html}");
    assert!(p["text"].as_str().unwrap().contains("SPRING-ZM"));
    assert_eq!(
        p["headers"][1],
        json!({"name": "To", "value": "\"Zoë\" <zoe@example.org>"})
    );
    assert_eq!(p["warnings"], json!([]), "{p}");

    let inline = json!({"campaign": {"name": "P", "from": "news@example.com", "subject": "Hi {{name}}",
                        "html": "<p>Hi {{name}}, see <a href=\"http://example.com/x\">this</a></p>"},
                        "recipient": {"email": "a@example.com", "name": "Ada"}});
    let p: Value = app
        .post_json("/v1/preview", &inline)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p["subject"], "Hi Ada");
    let kinds: Vec<&str> = p["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["no_text_part", "insecure_link"], "{p}");
    assert!(p["text"].as_str().unwrap().contains("Hi Ada"), "{p}");

    let mut broken = inline.clone();
    broken["campaign"]["html"] = json!("<p>{{coupon}}</p>");
    let r = app.post_json("/v1/preview", &broken).await;
    let problem = expect_problem(r, 422, "/problems/validation").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("missing field `coupon`"),
        "{problem}"
    );
    assert_eq!(app.campaign_count().await, 0, "a preview creates nothing");
    app.stop().await;
}

/// `POST /v1/preview` as multipart: the request as a `preview` part and the list a create would
/// take; the message is rendered for the row asked for, with that row's data. A row the list does
/// not have, or a row with no list, is refused naming `row`; nothing is created.
#[tokio::test]
async fn a_preview_renders_the_row_asked_for_of_the_list_sent_with_it() {
    let app = spawn_app().await;
    let form = |preview: Value, list: &str, media: &str| {
        json_and_list("preview", &preview, list.to_string(), media)
    };
    let send = |form: reqwest::multipart::Form| {
        app.client
            .post(app.url("/v1/preview"))
            .multipart(form)
            .send()
    };
    let campaign = csv_campaign();
    let csv =
        "email,name,city\na@example.com,Ada,Köln\nb@example.com,Bo,Lyon\nc@example.com,Cy,Porto\n";
    let r = send(form(
        json!({"campaign": campaign, "row": 2}),
        csv,
        "text/csv",
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["subject"], "Hi Bo");
    assert!(p["html"].as_str().unwrap().contains("<p>Lyon</p>"), "{p}");
    assert_eq!(
        p["headers"][1],
        json!({"name": "To", "value": "\"Bo\" <b@example.com>"})
    );

    let ndjson = "{\"email\":\"a@example.com\",\"data\":{\"city\":\"Oslo\"}}\n";
    let r = send(form(
        json!({"campaign": campaign, "row": 1}),
        ndjson,
        "application/x-ndjson",
    ))
    .await
    .unwrap();
    let p: Value = r.json().await.unwrap();
    assert!(p["html"].as_str().unwrap().contains("<p>Oslo</p>"), "{p}");

    let r = send(form(
        json!({"campaign": campaign, "row": 4}),
        csv,
        "text/csv",
    ))
    .await
    .unwrap();
    let problem = expect_problem(r, 422, "/problems/validation").await;
    assert_eq!(problem["errors"][0]["field"], "row", "{problem}");
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("the list has 3 recipients"),
        "{problem}"
    );

    // A row before the one asked for that cannot be read is the answer, naming its line.
    let bad = "email,name,city\na@example.com,Ada,Köln,Extra\nb@example.com,Bo,Lyon\n";
    let r = send(form(
        json!({"campaign": campaign, "row": 2}),
        bad,
        "text/csv",
    ))
    .await
    .unwrap();
    let problem = expect_problem(r, 422, "/problems/invalid-csv").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("line 2"),
        "{problem}"
    );

    let both = json!({"campaign": campaign, "row": 1,
                      "recipient": {"email": "a@example.com", "data": {"city": "X"}}});
    let r = send(form(both, csv, "text/csv")).await.unwrap();
    let problem = expect_problem(r, 422, "/problems/validation").await;
    assert_eq!(problem["errors"][0]["field"], "recipient", "{problem}");

    let r = app
        .post_json("/v1/preview", &json!({"campaign": campaign, "row": 1}))
        .await;
    let problem = expect_problem(r, 422, "/problems/validation").await;
    assert_eq!(problem["errors"][0]["field"], "row", "{problem}");
    assert_eq!(app.campaign_count().await, 0, "a preview creates nothing");
    app.stop().await;
}

/// `GET /v1/campaigns/{id}/recipients/{rid}/message`: a stored campaign's message for one of its
/// recipients is the one its outbox received; an id it does not have is a 404.
#[tokio::test]
async fn a_stored_campaigns_message_is_shown_recipient_by_recipient() {
    let app = spawn_app().await;
    let id = app.create(&inline_campaign(recipients(3))).await;
    app.wait_for(&id, std::time::Duration::from_secs(30), is_completed)
        .await;
    let page = app
        .get_json(&format!("/v1/campaigns/{id}/recipients"))
        .await;
    let sent = crate::e2e::outbox(&app, &id);
    for r in page["recipients"].as_array().unwrap() {
        let m = app
            .get_json(&format!(
                "/v1/campaigns/{id}/recipients/{}/message",
                r["id"]
            ))
            .await;
        let to = m["headers"][1]["value"].as_str().unwrap();
        assert!(to.contains(r["email"].as_str().unwrap()), "{m}");
        let eml = &sent[r["email"].as_str().unwrap()];
        // The outbox writes a non-ASCII subject RFC 2047-encoded.
        use base64::Engine;
        let subject =
            base64::engine::general_purpose::STANDARD.encode(m["subject"].as_str().unwrap());
        assert!(
            eml.contains(&format!("Subject: =?utf-8?B?{subject}?=")),
            "{m} / {eml}"
        );
        assert!(m["html"].as_str().unwrap().starts_with("<p>Hi Zoë"), "{m}");
    }
    for missing in ["999", "x"] {
        let r = app
            .client
            .get(app.url(&format!("/v1/campaigns/{id}/recipients/{missing}/message")))
            .send()
            .await
            .unwrap();
        expect_problem(r, 404, "/problems/not-found").await;
    }
    app.stop().await;
}

/// `{{web_url}}`: each recipient's message links to its own page, which shows that recipient's
/// message (sandboxed) and nobody else's; a tampered token shows nothing, and a template that uses
/// it where links are not signed is refused at creation.
#[tokio::test]
async fn the_web_view_link_shows_its_recipients_message_and_nothing_for_a_tampered_token() {
    let refused = spawn_app().await;
    let mut campaign = inline_campaign(recipients(3));
    campaign["html"] = json!("<p>Hi {{name}}</p><a href=\"{{web_url}}\">View in browser</a>");
    let r = refused.post_json("/v1/campaigns", &campaign).await;
    let p = expect_problem(r, 422, "/problems/validation").await;
    assert!(
        p["detail"].as_str().unwrap().contains("needs signed links"),
        "{p}"
    );
    refused.stop().await;

    let (sink, base) = crate::sink::Sink::start().await;
    let app = spawn_app_with(|c| {
        crate::sink::send_to(c, &base);
        c.unsubscribe.base_url = Some("https://mail.example.com".into());
        c.unsubscribe.secret = Some("unsubscribe-secret-for-tests-0123456789".into());
    })
    .await;
    let id = app.create(&campaign).await;
    app.wait_for(&id, std::time::Duration::from_secs(60), is_completed)
        .await;
    let received = sink.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3);
    for m in &received {
        let rid: i64 = m.recipient_id.parse().unwrap();
        let at = m
            .html
            .find("https://mail.example.com/v/")
            .expect("a web view link");
        let url = &m.html[at..at + m.html[at..].find('"').unwrap()];
        let token = url.rsplit('/').next().unwrap();
        assert!(token.starts_with(&format!("{id}.{rid}.")), "{token}");
        let r = app
            .client
            .get(app.url(&format!("/v/{token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let policy = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(policy.starts_with("sandbox;"), "{policy}");
        let page = r.text().await.unwrap();
        let name = format!("Hi Zoë {rid}</p>");
        assert!(page.contains(&name), "{page}");
        assert!(
            page.contains(url),
            "the page links to itself as the message does: {page}"
        );
        // Another recipient's id under this signature, or a changed signature: nothing.
        let mac = token.rsplit('.').next().unwrap();
        for forged in [
            format!("{id}.{}.{mac}", rid + 1),
            format!(
                "{}{}",
                &token[..token.len() - 1],
                if token.ends_with('A') { 'B' } else { 'A' }
            ),
        ] {
            let r = app
                .client
                .get(app.url(&format!("/v/{forged}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{forged}");
            assert!(!r.text().await.unwrap().contains("Hi Zoë"));
        }
        // An unsubscribe token is not a web view token.
        let unsubscribe = crate::feedback::token_of(&m.list_unsubscribe);
        let r = app
            .client
            .get(app.url(&format!("/v/{unsubscribe}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    app.stop().await;
}
