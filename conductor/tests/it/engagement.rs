//! Opens and clicks through the real API and the real send: a tracking campaign's messages, as the
//! provider received them, carry signed redirects and a pixel (never in place of the unsubscribe
//! link or the web view); following them records people once per recipient and link, machines
//! apart, and a tampered link leads nowhere.

use serde_json::{json, Value};

use crate::sink::{send_to, Received, Sink};
use crate::support::{expect_problem, spawn_app_with, TestApp};

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";

fn signed_links(c: &mut conductor::config::Config) {
    c.unsubscribe.base_url = Some("https://mail.example.com".into());
    c.unsubscribe.secret = Some("unsubscribe-secret-for-tests-0123456789".into());
}

fn tracked_campaign() -> Value {
    json!({
        "name": "Tracked",
        "from": "News <news@example.com>",
        "subject": "Hi {{name}}",
        "html": "<html><body><p>Hi {{name}}: <a href=\"https://shop.example.com/sale?c={{city}}&x=1\">Sale</a> \
                 <a href='https://example.com/about'>About</a> \
                 <a href=\"{{unsubscribe_url}}\">Unsubscribe</a> <a href=\"{{web_url}}\">View online</a> \
                 <a href=\"mailto:help@example.com\">Help</a></p></body></html>",
        "track": {"opens": true, "clicks": true},
        "recipients": [
            {"email": "r0@example.com", "name": "Ada", "data": {"city": "Köln"}},
            {"email": "r1@example.com", "name": "Bo", "data": {"city": "Köln"}},
            {"email": "r2@example.com", "name": "Cy", "data": {"city": "Köln"}},
        ],
    })
}

/// Every `href` and `src` value of `html`, `&amp;` read as `&`.
fn attrs(html: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for quote in ['"', '\''] {
        let open = format!("{name}={quote}");
        for part in html.split(&open).skip(1) {
            out.push(part[..part.find(quote).unwrap()].replace("&amp;", "&"));
        }
    }
    out
}

fn tracked(r: &Received) -> Vec<String> {
    attrs(&r.html, "href")
        .into_iter()
        .filter(|h| h.starts_with("https://mail.example.com/c/"))
        .collect()
}

/// The same link, on this test's server.
fn local(app: &TestApp, link: &str) -> String {
    app.url(link.strip_prefix("https://mail.example.com").unwrap())
}

#[tokio::test]
async fn clicks_count_once_per_recipient_and_link_and_machines_are_apart() {
    let (sink, base) = Sink::start().await;
    let app = spawn_app_with(|c| {
        send_to(c, &base);
        signed_links(c);
    })
    .await;
    let created = app.post_json("/v1/campaigns", &tracked_campaign()).await;
    assert_eq!(created.status(), 201);
    let c: Value = created.json().await.unwrap();
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(c["track"], json!({"opens": true, "clicks": true}));
    app.wait_for(
        &id,
        std::time::Duration::from_secs(30),
        crate::support::is_completed,
    )
    .await;

    let received = sink.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3);
    let by = |email: &str| {
        received
            .iter()
            .find(|r| r.to.contains(email))
            .unwrap()
            .clone()
    };
    let (r0, r1, r2) = (by("r0@"), by("r1@"), by("r2@"));
    for r in [&r0, &r1, &r2] {
        // Two links tracked; the unsubscribe link, the web view and mailto: as written.
        assert_eq!(tracked(r).len(), 2, "{}", r.html);
        let hrefs = attrs(&r.html, "href");
        let unsubscribe = r.list_unsubscribe.trim_matches(['<', '>']).to_string();
        assert!(
            hrefs.contains(&unsubscribe),
            "{hrefs:?} lacks {unsubscribe}"
        );
        assert!(hrefs
            .iter()
            .any(|h| h.starts_with("https://mail.example.com/v/")));
        assert!(hrefs.contains(&"mailto:help@example.com".to_string()));
        let pixels: Vec<String> = attrs(&r.html, "src");
        assert_eq!(pixels.len(), 1, "{}", r.html);
        assert!(pixels[0].starts_with("https://mail.example.com/o/"));
        assert!(
            r.html.contains("</p><img src="),
            "the pixel goes last: {}",
            r.html
        );
    }
    // The stored-message view shows exactly what was sent.
    let shown: Value = app
        .get_json(&format!(
            "/v1/campaigns/{id}/recipients/{}/message",
            r0.recipient_id
        ))
        .await;
    assert_eq!(shown["html"], r0.html.as_str());
    // Shown to someone else (`?tracking=inert`, as the dashboard asks): the same shape, with
    // stand-ins that name no one, so looking at it records nothing.
    let inert: Value = app
        .get_json(&format!(
            "/v1/campaigns/{id}/recipients/{}/message?tracking=inert",
            r0.recipient_id
        ))
        .await;
    let inert = Received {
        html: inert["html"].as_str().unwrap().to_string(),
        ..r0.clone()
    };
    assert_eq!(tracked(&inert).len(), 2, "{}", inert.html);
    assert!(tracked(&inert).iter().all(|l| !tracked(&r0).contains(l)));
    let stand_in = attrs(&inert.html, "src")[0].clone();
    assert_ne!(stand_in, attrs(&r0.html, "src")[0]);
    let r = app
        .client
        .get(local(&app, &stand_in))
        .header("user-agent", IPHONE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .get(app.url(&format!(
            "/v1/campaigns/{id}/recipients/{}/message?tracking=off",
            r0.recipient_id
        )))
        .send()
        .await
        .unwrap();
    expect_problem(r, 400, "/problems/invalid-query").await;

    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(IPHONE)
        .build()
        .unwrap();
    let follow = |client: &reqwest::Client, link: String, head: bool| {
        let req = if head {
            client.head(local(&app, &link))
        } else {
            client.get(local(&app, &link))
        };
        async move { req.send().await.unwrap() }
    };
    let (sale0, about0) = (tracked(&r0)[0].clone(), tracked(&r0)[1].clone());
    // Ada clicks the sale twice and "about" once; Bo the sale once.
    for _ in 0..2 {
        let r = follow(&browser, sale0.clone(), false).await;
        assert_eq!(r.status(), 302);
        assert_eq!(
            r.headers()["location"],
            "https://shop.example.com/sale?c=K%C3%B6ln&x=1"
        );
    }
    let r = follow(&browser, about0.clone(), false).await;
    assert_eq!(r.headers()["location"], "https://example.com/about");
    follow(&browser, tracked(&r1)[0].clone(), false).await;
    // A scanner checks Cy's link with HEAD, then fetches it as a library: both machines'.
    let scanner = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("python-requests/2.31.0")
        .build()
        .unwrap();
    assert_eq!(
        follow(&browser, tracked(&r2)[0].clone(), true)
            .await
            .status(),
        302
    );
    assert_eq!(
        follow(&scanner, tracked(&r2)[0].clone(), false)
            .await
            .status(),
        302
    );

    // Opens: Ada's mail client; Bo's through Apple's privacy prefetch.
    let pixel = |r: &Received| attrs(&r.html, "src")[0].clone();
    let r = follow(&browser, pixel(&r0), false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/gif");
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-store"));
    let apple = reqwest::Client::builder()
        .user_agent("Mozilla/5.0")
        .build()
        .unwrap();
    assert_eq!(follow(&apple, pixel(&r1), false).await.status(), 200);

    // Tampered: another target under Ada's signature, another recipient under it, a cut MAC.
    let (path, _) = sale0.split_once("?u=").unwrap();
    let evil = format!("{path}?u=https%3A%2F%2Fevil.example%2F");
    let r = follow(&browser, evil, false).await;
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("location").is_none());
    let mac = path.rsplit('.').next().unwrap();
    let other = format!(
        "https://mail.example.com/c/{id}.{}.{mac}?{}",
        r1.recipient_id,
        sale0.split_once('?').unwrap().1
    );
    assert_eq!(follow(&browser, other, false).await.status(), 404);
    let cut = sale0.replacen(&format!(".{mac}?"), &format!(".{}?", &mac[1..]), 1);
    assert_eq!(follow(&browser, cut, false).await.status(), 404);
    let no_target = path.to_string();
    assert_eq!(follow(&browser, no_target, false).await.status(), 404);
    let bad_pixel = format!("{}x", pixel(&r0));
    assert_eq!(follow(&browser, bad_pixel, false).await.status(), 404);

    // The figures: people once per recipient, every click counted, machines apart; per link too.
    // (The campaign's view is up to a second old.)
    let c = app
        .wait_for(&id, std::time::Duration::from_secs(10), |c| {
            c["engagement"]["clicks"]["machine"] == 2 && c["engagement"]["opens"]["machine"] == 1
        })
        .await;
    assert_eq!(
        c["engagement"],
        json!({
            "clicks": {"unique": 2, "total": 4, "machine": 2},
            "opens": {"unique": 1, "total": 1, "machine": 1},
        }),
        "{c}"
    );
    assert_eq!(
        c["links"],
        json!([
            {"url": "https://shop.example.com/sale?c=Köln&x=1", "clicks": 3, "unique": 2, "machine": 2},
            {"url": "https://example.com/about", "clicks": 1, "unique": 1, "machine": 0},
        ]),
        "{c}"
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "conductor_engagement_events_total{{campaign=\"{id}\",kind=\"click\",agent=\"human\"}} 4"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "conductor_engagement_recipients{{campaign=\"{id}\",kind=\"open\"}} 1"
    )));
    app.stop().await;
}

#[tokio::test]
async fn tracking_needs_signed_links_and_a_preview_shows_it() {
    let app = spawn_app_with(|_| {}).await;
    let r = app.post_json("/v1/campaigns", &tracked_campaign()).await;
    let p = expect_problem(r, 422, "/problems/validation").await;
    // Its `{{web_url}}` is refused first; without it, the tracking.
    assert!(p["errors"][0]["field"] == "template", "{p}");
    let mut plain = tracked_campaign();
    plain["html"] = json!("<p><a href=\"https://example.com/\">x</a></p>");
    let r = app.post_json("/v1/campaigns", &plain).await;
    let p = expect_problem(r, 422, "/problems/validation").await;
    assert_eq!(p["errors"][0]["field"], "track", "{p}");
    app.stop().await;

    let app = spawn_app_with(signed_links).await;
    let mut campaign = tracked_campaign();
    campaign.as_object_mut().unwrap().remove("recipients");
    let r = app
        .post_json(
            "/v1/preview",
            &json!({"campaign": campaign, "recipient": {"email": "a@example.com", "name": "Ada", "data": {"city": "Bonn"}}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let shown: Value = r.json().await.unwrap();
    let html = shown["html"].as_str().unwrap();
    let hrefs = attrs(html, "href");
    // Stand-ins that record nothing and lead nowhere but to the link's own target.
    assert!(
        hrefs[0].starts_with("https://mail.example.com/c/preview."),
        "{hrefs:?}"
    );
    assert!(hrefs.contains(&"https://mail.example.com/u/preview".to_string()));
    assert_eq!(attrs(html, "src"), ["https://mail.example.com/o/preview"]);
    let r = app
        .client
        .get(app.url(hrefs[0].strip_prefix("https://mail.example.com").unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}
