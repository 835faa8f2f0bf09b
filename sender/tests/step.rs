//! The sender's step function driven directly, on a manual clock.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use renderer::{BodyStore, LocalBodyStore, Mailbox, RenderedBatch, RenderedMessage};
use sender::clock::ManualClock;
use sender::{
    Clock, LeaseReply, Outcome, OutgoingMessage, Provider, RecipientOutcome, SendLease, Sender,
    SenderConfig, SenderError, Step, WorkError, WorkSource,
};
use tokio_util::sync::CancellationToken;

const T0: i64 = 1_700_000_040_000; // a minute boundary

#[derive(Default)]
struct FakeSource {
    replies: Mutex<Vec<LeaseReply>>,
    reports: Mutex<Vec<(Vec<RecipientOutcome>, bool)>>,
    /// Interim reports fail (the conductor is unreachable); the closing one still arrives.
    refuse_interim: std::sync::atomic::AtomicBool,
    /// Interim reports find the lease gone (it expired at the conductor).
    lose_interim: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl WorkSource for FakeSource {
    async fn lease(&self, _want: usize) -> Result<LeaseReply, WorkError> {
        Ok(self
            .replies
            .lock()
            .unwrap()
            .pop()
            .unwrap_or(LeaseReply::Idle))
    }
    async fn report(
        &self,
        lease_id: &str,
        o: Vec<RecipientOutcome>,
        last: bool,
    ) -> Result<(), WorkError> {
        if !last
            && self
                .refuse_interim
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(WorkError::Unavailable("unreachable".into()));
        }
        if !last && self.lose_interim.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(WorkError::LeaseLost(lease_id.to_string()));
        }
        self.reports.lock().unwrap().push((o, last));
        Ok(())
    }
}

struct FakeProvider {
    clock: Arc<ManualClock>,
    calls: Mutex<Vec<(i64, i64)>>,
    answer: Box<dyn Fn(i64) -> Outcome + Send + Sync>,
    /// Messages per request (Postmark's batch); each batched request is logged in `requests`.
    batch_limit: std::sync::atomic::AtomicUsize,
    requests: Mutex<Vec<(Vec<i64>, i64)>>,
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn send(&self, msg: OutgoingMessage<'_>) -> Outcome {
        let id = msg.message.recipient_id;
        self.calls.lock().unwrap().push((id, self.clock.now_ms()));
        (self.answer)(id)
    }
    fn batch_limit(&self) -> usize {
        self.batch_limit.load(std::sync::atomic::Ordering::SeqCst)
    }
    async fn send_batch(&self, msgs: &[OutgoingMessage<'_>]) -> Vec<Outcome> {
        let ids = msgs.iter().map(|m| m.message.recipient_id).collect();
        self.requests
            .lock()
            .unwrap()
            .push((ids, self.clock.now_ms()));
        let mut out = Vec::new();
        for m in msgs {
            out.push(self.send(*m).await);
        }
        out
    }
}

/// A sender that reports every second outcome, however soon after the last report.
async fn setup(
    n: i64,
    answer: impl Fn(i64) -> Outcome + Send + Sync + 'static,
) -> (
    Arc<ManualClock>,
    Arc<FakeSource>,
    Arc<FakeProvider>,
    Arc<Sender>,
    tempfile::TempDir,
) {
    let cfg = SenderConfig {
        report_every: 2,
        report_interval_ms: 0,
        ..SenderConfig::default()
    };
    setup_with(n, answer, cfg).await
}

async fn setup_with(
    n: i64,
    answer: impl Fn(i64) -> Outcome + Send + Sync + 'static,
    cfg: SenderConfig,
) -> (
    Arc<ManualClock>,
    Arc<FakeSource>,
    Arc<FakeProvider>,
    Arc<Sender>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let bodies = Arc::new(LocalBodyStore::new(dir.path()));
    let batch = RenderedBatch {
        version: renderer::batch::FORMAT_VERSION,
        campaign_id: "c".into(),
        batch: 0,
        from: Mailbox {
            name: None,
            email: "from@example.com".into(),
        },
        reply_to: None,
        headers: Default::default(),
        messages: (0..n)
            .map(|i| RenderedMessage {
                recipient_id: i,
                to: format!("r{i}@example.com"),
                to_name: None,
                subject: "s".into(),
                html: "<p>h</p>".into(),
                text: "h".into(),
                list_unsubscribe: None,
            })
            .collect(),
    };
    bodies.put("b0", batch.encode().unwrap()).await.unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let source = Arc::new(FakeSource::default());
    let provider = Arc::new(FakeProvider {
        clock: clock.clone(),
        calls: Mutex::new(vec![]),
        answer: Box::new(answer),
        batch_limit: 1.into(),
        requests: Mutex::new(vec![]),
    });
    let sender = Arc::new(Sender::new(
        source.clone(),
        bodies,
        provider.clone(),
        clock.clone(),
        cfg,
        CancellationToken::new(),
    ));
    (clock, source, provider, sender, dir)
}

fn lease(recipients: Vec<i64>, first_at: i64, spacing_us: i64, deadline: i64) -> SendLease {
    SendLease {
        lease_id: "L1".into(),
        campaign_id: "c".into(),
        batch: 0,
        body_key: "b0".into(),
        recipients,
        minute: T0,
        first_at,
        spacing_us,
        deadline,
    }
}

/// Awaits a spawned step, failing the test instead of hanging it if the step never ends.
async fn finish(step: tokio::task::JoinHandle<Step>) -> Step {
    tokio::time::timeout(std::time::Duration::from_secs(10), step)
        .await
        .expect("the step did not finish")
        .unwrap()
}

/// Lets spawned work run until `done` holds (bounded; the manual clock does not move meanwhile).
async fn eventually(done: impl Fn() -> bool) {
    for _ in 0..5_000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn sends_on_their_slots_and_reports_every_outcome() {
    let (clock, source, provider, sender, _dir) = setup(4, |i| Outcome::Sent {
        provider_id: Some(format!("m{i}")),
    })
    .await;
    source.replies.lock().unwrap().push(LeaseReply::Lease(lease(
        vec![0, 1, 2, 3],
        T0,
        10_000_000,
        T0 + 58_000,
    )));
    let s = sender.clone();
    let step = tokio::spawn(async move { s.try_one_lease().await.unwrap() });
    eventually(|| provider.calls.lock().unwrap().len() == 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        provider.calls.lock().unwrap().len(),
        1,
        "only the first slot is due"
    );
    for n in 2..=4 {
        clock.advance(10_000);
        eventually(|| provider.calls.lock().unwrap().len() == n).await;
    }
    assert_eq!(
        finish(step).await,
        Step::Worked {
            attempted: 4,
            released: 0
        }
    );
    let calls = provider.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            (0, T0),
            (1, T0 + 10_000),
            (2, T0 + 20_000),
            (3, T0 + 30_000)
        ]
    );
    let reports = source.reports.lock().unwrap().clone();
    let ids: Vec<i64> = reports
        .iter()
        .flat_map(|(o, _)| o.iter().map(|o| o.recipient_id))
        .collect();
    assert_eq!(ids, vec![0, 1, 2, 3]);
    assert!(
        reports.last().unwrap().1,
        "the last report closes the lease"
    );
}

#[tokio::test]
async fn outcomes_that_come_fast_wait_for_the_report_interval() {
    let cfg = SenderConfig {
        report_every: 2,
        report_interval_ms: 100,
        ..SenderConfig::default()
    };
    let (clock, source, provider, sender, _dir) = setup_with(
        12,
        |i| Outcome::Sent {
            provider_id: Some(format!("m{i}")),
        },
        cfg,
    )
    .await;
    // Slots 20 ms apart: a report every second outcome would mean five interim reports; the
    // 100 ms interval makes it one at 100 ms and one at 200 ms.
    source.replies.lock().unwrap().push(LeaseReply::Lease(lease(
        (0..12).collect(),
        T0,
        20_000,
        T0 + 58_000,
    )));
    let s = sender.clone();
    let step = tokio::spawn(async move { s.try_one_lease().await.unwrap() });
    eventually(|| provider.calls.lock().unwrap().len() == 1).await;
    for n in 2..=12 {
        clock.advance(20);
        eventually(|| provider.calls.lock().unwrap().len() == n).await;
        if n <= 5 {
            assert!(
                source.reports.lock().unwrap().is_empty(),
                "{n} sends within 100 ms of the lease: no report yet"
            );
        }
    }
    assert_eq!(
        finish(step).await,
        Step::Worked {
            attempted: 12,
            released: 0
        }
    );
    let reports = source.reports.lock().unwrap().clone();
    let closing: Vec<bool> = reports.iter().map(|(_, last)| *last).collect();
    assert_eq!(closing, vec![false, false, true], "{reports:?}");
    let reported: Vec<i64> = reports
        .iter()
        .flat_map(|(o, _)| o.iter().map(|o| o.recipient_id))
        .collect();
    assert_eq!(reported, (0..12).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_batching_provider_gets_each_second_of_slots_in_one_request_never_early() {
    let (clock, source, provider, sender, _dir) =
        setup(10, |_| Outcome::Sent { provider_id: None }).await;
    provider
        .batch_limit
        .store(500, std::sync::atomic::Ordering::SeqCst);
    // Slots every 300 ms: 0, 300, …, 2700.
    source.replies.lock().unwrap().push(LeaseReply::Lease(lease(
        (0..10).collect(),
        T0,
        300_000,
        T0 + 58_000,
    )));
    let s = sender.clone();
    let step = tokio::spawn(async move { s.try_one_lease().await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(
        provider.requests.lock().unwrap().is_empty(),
        "the first request waits for the last slot it carries"
    );
    for t in [900, 2_100, 2_700] {
        clock.set(T0 + t);
        let n = provider.requests.lock().unwrap().len();
        eventually(|| provider.requests.lock().unwrap().len() == n + 1).await;
    }
    assert_eq!(
        finish(step).await,
        Step::Worked {
            attempted: 10,
            released: 0
        }
    );
    assert_eq!(
        provider.requests.lock().unwrap().clone(),
        vec![
            (vec![0, 1, 2, 3], T0 + 900),
            (vec![4, 5, 6, 7], T0 + 2_100),
            (vec![8, 9], T0 + 2_700),
        ]
    );
    let reported: usize = source
        .reports
        .lock()
        .unwrap()
        .iter()
        .map(|(o, _)| o.len())
        .sum();
    assert_eq!(reported, 10, "one outcome per message, not per request");
}

#[tokio::test]
async fn a_lease_that_outlives_its_minute_cannot_spend_its_tokens() {
    let (clock, source, provider, sender, _dir) =
        setup(3, |_| Outcome::Sent { provider_id: None }).await;
    source.replies.lock().unwrap().push(LeaseReply::Lease(lease(
        vec![0, 1, 2],
        T0,
        1_000_000,
        T0 + 58_000,
    )));
    // The sender only gets to it after the deadline (a stall, a GC pause, a slow body fetch).
    clock.set(T0 + 58_000);
    assert_eq!(
        sender.try_one_lease().await.unwrap(),
        Step::Worked {
            attempted: 0,
            released: 3
        }
    );
    assert!(provider.calls.lock().unwrap().is_empty());
    let reports = source.reports.lock().unwrap().clone();
    assert_eq!(reports, vec![(vec![], true)]);
}

#[tokio::test]
async fn an_account_stop_halts_the_lease() {
    let (_clock, source, provider, sender, _dir) = setup(5, |_| Outcome::AccountStop {
        reason: "401".into(),
    })
    .await;
    let mut l = lease(vec![0, 1, 2, 3, 4], T0, 0, T0 + 58_000);
    l.spacing_us = 0;
    source.replies.lock().unwrap().push(LeaseReply::Lease(l));
    let step = sender.try_one_lease().await.unwrap();
    // The provider answers at once, so the refusal is in hand before the second request would start:
    // nothing goes out after it.
    let calls = provider.calls.lock().unwrap().len();
    assert_eq!(
        calls, 1,
        "kept sending after the provider refused the account"
    );
    assert_eq!(
        step,
        Step::Worked {
            attempted: 1,
            released: 4
        }
    );
}

#[tokio::test]
async fn no_tokens_and_idle_are_passed_on() {
    let (_clock, source, _provider, sender, _dir) = setup(1, |_| Outcome::Released).await;
    source
        .replies
        .lock()
        .unwrap()
        .push(LeaseReply::NoTokens { until: T0 + 60_000 });
    assert_eq!(
        sender.try_one_lease().await.unwrap(),
        Step::WaitUntil(T0 + 60_000)
    );
    assert_eq!(sender.try_one_lease().await.unwrap(), Step::Idle);
}

#[tokio::test]
async fn a_missing_batch_hands_the_lease_back_saying_it_is_unreadable() {
    let (_clock, source, provider, sender, _dir) = setup(1, |_| Outcome::Released).await;
    let mut l = lease(vec![0, 1], T0, 0, T0 + 58_000);
    l.body_key = "nope".into();
    source.replies.lock().unwrap().push(LeaseReply::Lease(l));
    let err = sender.try_one_lease().await.unwrap_err();
    assert!(
        matches!(&err, SenderError::Batch { key, .. } if key == "nope"),
        "{err}"
    );
    let reports = source.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    let (outcomes, last) = &reports[0];
    assert!(*last, "the lease is closed");
    assert_eq!(
        outcomes.iter().map(|o| o.recipient_id).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(&o.outcome, Outcome::Unreadable { reason } if !reason.is_empty())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| !o.outcome.attempted()),
        "no token was spent on a request"
    );
    assert!(
        provider.calls.lock().unwrap().is_empty(),
        "nothing was sent"
    );
}

#[tokio::test]
async fn no_send_starts_without_a_recent_heartbeat() {
    let (clock, source, provider, sender, _dir) =
        setup(3, |_| Outcome::Sent { provider_id: None }).await;
    // Slots five seconds apart: each later send is preceded by a report the conductor received.
    source.replies.lock().unwrap().push(LeaseReply::Lease(lease(
        vec![0, 1, 2],
        T0,
        5_000_000,
        T0 + 58_000,
    )));
    let s = sender.clone();
    let step = tokio::spawn(async move { s.try_one_lease().await.unwrap() });
    let mut reports_before = 0;
    for n in 1..=3 {
        eventually(|| provider.calls.lock().unwrap().len() == n).await;
        // Every later send was preceded by a report that arrived after the previous send.
        let reports = source.reports.lock().unwrap().len();
        if n > 1 {
            assert!(
                reports > reports_before,
                "send {n} started without a heartbeat"
            );
        }
        reports_before = reports;
        clock.advance(5_000);
    }
    assert_eq!(
        finish(step).await,
        Step::Worked {
            attempted: 3,
            released: 0
        }
    );
}

#[tokio::test]
async fn a_sender_that_cannot_be_heard_stops_sending() {
    let (clock, source, provider, sender, _dir) =
        setup(3, |_| Outcome::Sent { provider_id: None }).await;
    source
        .refuse_interim
        .store(true, std::sync::atomic::Ordering::SeqCst);
    source.replies.lock().unwrap().push(LeaseReply::Lease(lease(
        vec![0, 1, 2],
        T0,
        5_000_000,
        T0 + 58_000,
    )));
    let s = sender.clone();
    let step = tokio::spawn(async move { s.try_one_lease().await.unwrap() });
    eventually(|| provider.calls.lock().unwrap().len() == 1).await;
    clock.advance(5_000);
    // The heartbeat before the second send fails: it is not sent, and the lease is handed back.
    assert_eq!(
        finish(step).await,
        Step::Worked {
            attempted: 1,
            released: 2
        }
    );
    assert_eq!(provider.calls.lock().unwrap().len(), 1);
    let reports = source.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].1, "only the closing report arrived");
}

#[tokio::test]
async fn a_lease_found_lost_sends_nothing_more() {
    let cfg = SenderConfig {
        report_every: 1,
        report_interval_ms: 0,
        ..SenderConfig::default()
    };
    let (clock, source, provider, sender, _dir) =
        setup_with(5, |_| Outcome::Sent { provider_id: None }, cfg).await;
    source
        .lose_interim
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Slots 200 ms apart: all five fall within the heartbeat, so only the lost lease can stop them.
    source.replies.lock().unwrap().push(LeaseReply::Lease(lease(
        (0..5).collect(),
        T0,
        200_000,
        T0 + 58_000,
    )));
    let s = sender.clone();
    let step = tokio::spawn(async move { s.try_one_lease().await.unwrap() });
    eventually(|| provider.calls.lock().unwrap().len() == 1).await;
    clock.advance(200);
    // The report of the first outcome, made once the second request has started, finds the lease
    // gone: nothing after it starts.
    assert_eq!(
        finish(step).await,
        Step::Worked {
            attempted: 2,
            released: 3
        }
    );
    assert_eq!(provider.calls.lock().unwrap().len(), 2);
}

#[test]
fn clock_is_object_safe() {
    let _c: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
}
