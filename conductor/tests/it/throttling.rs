//! A provider that throttles and one that does not answer: AIMD lowers the rate and recovers every
//! deferral; `on_ambiguous = "resend"` sends what is in doubt again instead of holding it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use conductor::config::OnAmbiguous;

use crate::sink::{send_to, Faults, Sink};
use crate::support::*;

#[tokio::test]
async fn a_throttling_provider_lowers_the_rate_and_every_deferral_comes_back() {
    let (sink, base) = Sink::start().await;
    // The provider answers 429 to everything at first.
    *sink.faults.lock().unwrap() = Some(Faults {
        server_error: 0.0,
        throttled: 1.0,
        retry_after_s: 1,
        slow: 0.0,
        slow_ms: 0,
    });
    let app = spawn_app_with(|c| {
        send_to(c, &base);
        c.governor.per_minute = 6000;
    })
    .await;
    let id = app.create(&inline_campaign(recipients(30))).await;
    let start = Instant::now();
    let cap = loop {
        let minutes = app.get_json("/v1/minutes").await;
        let cap = minutes["minutes"]
            .as_array()
            .and_then(|m| m.last())
            .map(|m| m["cap"].as_u64().unwrap());
        if cap.is_some_and(|c| c < 6000) {
            break cap.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the cap was never lowered: {minutes}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // One cut per burst: the 429s that answer sends made before the cut do not cut again.
    assert_eq!(cap, 4200);
    // More 429s than one cut needs arrived, and the cap was still cut once: that is what makes the
    // single 4,200 above a test of "once per burst". (How soon the first cut comes — within a dozen
    // requests — is an upper bound tested on the pure rule, throttle.rs.)
    let throttled = sink.received.lock().unwrap().len();
    assert!(
        throttled >= 12,
        "only {throttled} 429s: not enough to show a burst cut once"
    );

    // The provider recovers: every recipient is accepted once, none given up.
    *sink.faults.lock().unwrap() = None;
    let c = app
        .wait_for(&id, Duration::from_secs(90), is_completed)
        .await;
    assert_eq!(c["counts"]["sent"], 30, "{c}");
    assert_eq!(c["counts"]["failed"], 0, "{c}");
    let (n, accepted) = sink.accepted();
    assert_eq!((n, accepted.len()), (30, 30));
    app.stop().await;
}

#[tokio::test]
async fn with_on_ambiguous_resend_a_send_in_doubt_is_sent_again() {
    let (sink, base) = Sink::start().await;
    // The first answer to each recipient comes after the provider timeout: each first send is in
    // doubt; the resends are answered at once.
    sink.answer_after_ms.store(1_500, Ordering::Relaxed);
    sink.delay_first.store(3, Ordering::Relaxed);
    let app = spawn_app_with(|c| {
        send_to(c, &base);
        c.provider.timeout_ms = 300;
        c.campaigns.on_ambiguous = OnAmbiguous::Resend;
    })
    .await;
    let id = app.create(&inline_campaign(recipients(3))).await;
    let c = app
        .wait_for(&id, Duration::from_secs(60), is_completed)
        .await;
    // Nobody is left `unknown`; the price is that each of them reached the provider twice.
    assert_eq!(c["counts"]["sent"], 3, "{c}");
    assert_eq!(c["counts"]["unknown"], 0, "{c}");
    assert_eq!(sink.received.lock().unwrap().len(), 6);
    let page = app
        .get_json(&format!("/v1/campaigns/{id}/recipients?state=sent"))
        .await;
    assert_eq!(page["recipients"][0]["attempts"], 2, "{page}");
    app.stop().await;
}

#[tokio::test]
async fn by_default_a_send_in_doubt_is_held_as_unknown() {
    let (sink, base) = Sink::start().await;
    sink.answer_after_ms.store(1_500, Ordering::Relaxed);
    let app = spawn_app_with(|c| {
        send_to(c, &base);
        c.provider.timeout_ms = 300;
    })
    .await;
    let id = app.create(&inline_campaign(recipients(3))).await;
    let c = app
        .wait_for(&id, Duration::from_secs(30), is_completed)
        .await;
    assert_eq!(c["counts"]["unknown"], 3, "{c}");
    assert_eq!(sink.received.lock().unwrap().len(), 3);
    app.stop().await;
}
