//! The store suite: per-recipient state, leases and the minute ledger, with time passed in explicitly.
//! Every case runs on SQLite and on PostgreSQL (each test in its own schema).

use conductor::domain::recipient::RecipientState;
use conductor::domain::scope::Scope;
use std::path::Path;
use std::sync::Arc;

use conductor::domain::validate::{self, CampaignRequest, RecipientIn, ValidCampaign};
use conductor::store::{Action, LeaseRules, ReportRules, SqlStore, Status, Store, StoreError};
use sender::{LeaseReply, Millis, Outcome, RecipientOutcome, SendLease};

const M: Millis = 1_700_000_040_000; // a minute boundary

/// Runs one case on a fresh SQLite file.
async fn on_sqlite<F: std::future::Future<Output = ()>>(case: impl FnOnce(Arc<dyn Store>) -> F) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .unwrap();
    case(Arc::new(store)).await;
}

/// Runs one case in a fresh schema of the test database; the schema is dropped afterwards.
async fn on_postgres<F: std::future::Future<Output = ()>>(case: impl FnOnce(Arc<dyn Store>) -> F) {
    let schema = crate::support::PgSchema::create().await;
    let store = SqlStore::open(&schema.url).await.unwrap();
    case(Arc::new(store)).await;
    schema.drop().await;
}

/// Each case, once per backend.
macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $case() { super::on_sqlite(super::$case).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $case() { super::on_postgres(super::$case).await } )*
        }
    };
}

on_every_backend!(
    leases_never_grant_more_than_the_cap_in_a_minute,
    reports_settle_recipients_and_late_reports_are_fenced,
    only_the_report_that_leaves_nothing_open_says_the_campaign_drained,
    a_report_settles_only_what_its_own_lease_holds,
    deferred_recipients_wait_and_every_retry_costs_a_token,
    an_expired_lease_makes_its_recipients_unknown_never_resent,
    a_silent_lease_holds_what_may_have_started_and_requeues_the_rest,
    leases_go_round_robin_over_running_campaigns,
    an_account_stop_pauses_the_campaign_with_its_reason,
    cancel_settles_what_is_waiting_and_refuses_resume,
    render_jobs_are_handed_out_once_until_stale_and_failures_are_recorded,
    one_renderer_holds_a_batch_until_its_claim_lapses,
    lifecycle_transitions_are_reported_once_and_bodies_purged_after_retention,
    a_complaint_suppresses_the_address_before_its_next_send_and_in_new_campaigns,
    unknown_recipients_are_listed_and_sent_again_only_on_request,
    campaign_and_domain_caps_bind_under_the_global_one,
    leases_are_shared_by_priority,
    scheduled_campaigns_wait_for_send_at_and_their_window,
    a_campaign_cap_change_applies_next_minute_and_is_audited,
    a_suppressed_address_is_never_leased_by_any_path,
    the_sandbox_in_force_at_lease_time_decides,
    an_unreadable_batch_is_rendered_again_then_its_recipients_fail,
    counters_always_equal_a_full_recount,
    rendering_stays_a_window_ahead_of_sending,
    leases_follow_the_batch_cursor_and_deferrals_come_due_first,
    an_import_not_heard_from_is_discarded_and_its_rows_purged,
    finished_history_is_pruned_and_the_metrics_totals_kept,
    one_recipients_message_input_is_read_by_its_id,
    engagement_is_counted_once_per_recipient_and_link_machines_apart,
);

/// PostgreSQL plans from statistics gathered before a campaign's rows existed unless they are
/// refreshed: a large import refreshes them, so the planner knows the table holds its rows (and
/// plans the first leases by id, not as scans of the whole campaign).
#[tokio::test]
async fn a_large_import_refreshes_postgres_statistics() {
    use sqlx::Connection;
    let schema = crate::support::PgSchema::create().await;
    let store: Arc<dyn Store> = Arc::new(SqlStore::open(&schema.url).await.unwrap());
    let mut conn = sqlx::AnyConnection::connect(&schema.url).await.unwrap();
    let rows = "SELECT CAST(reltuples AS BIGINT) FROM pg_class WHERE oid = 'recipients'::regclass";
    let before: i64 = sqlx::query_scalar(rows).fetch_one(&mut conn).await.unwrap();
    assert!(before < 1, "a new table has no statistics yet ({before})");
    let c = store
        .create_campaign(&campaign(12_000), 1000, M)
        .await
        .unwrap();
    assert_eq!(c.counts.total, 12_000);
    let after: i64 = sqlx::query_scalar(rows).fetch_one(&mut conn).await.unwrap();
    assert!(
        (11_000..=13_000).contains(&after),
        "the planner believes recipients holds {after} rows"
    );
    drop(conn);
    schema.drop().await;
}

/// Opens and clicks: a recipient's second click on a link is a click but not a second unique one,
/// machines' events are kept apart,
/// and a recipient the campaign does not have records nothing.
async fn engagement_is_counted_once_per_recipient_and_link_machines_apart(store: Arc<dyn Store>) {
    use conductor::domain::engagement::{Event, Figures, Kind, LinkClicks};
    let mut req = request();
    req.track.opens = true;
    req.track.clicks = true;
    let emails: Vec<String> = (0..3).map(|i| format!("r{i}@example.com")).collect();
    let id = create_valid(&store, &campaign_of(req, &emails), 100, M).await;
    let input = store.message_input(&id, 0).await.unwrap();
    assert!(input.track.opens && input.track.clicks);
    let event = |rid: i64, kind: Kind, url: Option<&str>, machine: bool| Event {
        campaign_id: id.clone(),
        recipient_id: rid,
        kind,
        url: url.map(Into::into),
        machine,
        at_ms: M + rid,
    };
    let (sale, about) = ("https://shop.example/sale", "https://shop.example/about");
    for e in [
        event(0, Kind::Click, Some(sale), false),
        event(0, Kind::Click, Some(sale), false),
        event(0, Kind::Click, Some(about), false),
        event(1, Kind::Click, Some(sale), false),
        event(2, Kind::Click, Some(sale), true),
        event(0, Kind::Open, None, false),
        event(0, Kind::Open, None, false),
        event(1, Kind::Open, None, true),
    ] {
        assert!(store.record_engagement(&e).await.unwrap());
    }
    assert!(!store
        .record_engagement(&event(99, Kind::Open, None, false))
        .await
        .unwrap());
    let c = store.campaign(&id).await.unwrap();
    let e = c.engagement.expect("a tracking campaign shows its figures");
    assert_eq!(
        e.clicks,
        Figures {
            unique: 2,
            total: 4,
            machine: 1
        }
    );
    assert_eq!(
        e.opens,
        Figures {
            unique: 1,
            total: 2,
            machine: 1
        }
    );
    assert_eq!(
        store.links(&id, 10).await.unwrap(),
        vec![
            LinkClicks {
                url: sale.into(),
                clicks: 3,
                unique: 2,
                machine: 1
            },
            LinkClicks {
                url: about.into(),
                clicks: 1,
                unique: 1,
                machine: 0
            },
        ]
    );
    assert_eq!(store.links(&id, 1).await.unwrap().len(), 1);
    // A campaign that tracks nothing shows no figures.
    let plain = create(&store, 2, 100, M).await;
    assert!(store.campaign(&plain).await.unwrap().engagement.is_none());
    // The metrics see the tracking campaign, and only it.
    let view = store.metrics_view(M).await.unwrap();
    assert_eq!(view.engagement.len(), 1);
    assert_eq!(view.engagement[0].0, id);
}

/// What a stored campaign's message for one recipient is rendered from: its sender, its template
/// and that recipient's own data, by id; an id it does not have is named.
async fn one_recipients_message_input_is_read_by_its_id(store: Arc<dyn Store>) {
    let id = create(&store, 250, 100, M).await;
    let input = store.message_input(&id, 137).await.unwrap();
    assert_eq!(input.from.email, "a@example.com");
    assert_eq!(input.template.html, "<p>{{email}}</p>");
    assert_eq!(input.recipients.len(), 1);
    assert_eq!(input.recipients[0].id, 137);
    assert_eq!(input.recipients[0].email, "r137@example.com");
    assert!(matches!(
        store.message_input(&id, 250).await,
        Err(StoreError::NoRecipient(c, 250)) if c == id
    ));
    assert!(matches!(
        store.message_input("nope", 0).await,
        Err(StoreError::NotFound(_))
    ));
    // Past its retention, a message is no longer shown.
    store.bodies_purged(&id, M + 1).await.unwrap();
    assert!(matches!(
        store.message_input(&id, 137).await,
        Err(StoreError::NoRecipient(c, 137)) if c == id
    ));
}

fn campaign(n: usize) -> ValidCampaign {
    let emails: Vec<String> = (0..n).map(|i| format!("r{i}@example.com")).collect();
    campaign_of(request(), &emails)
}

fn request() -> CampaignRequest {
    CampaignRequest {
        name: "t".into(),
        from: "a@example.com".into(),
        reply_to: None,
        template: None,
        subject: Some("s".into()),
        html: Some("<p>{{email}}</p>".into()),
        ..Default::default()
    }
}

fn campaign_of(req: CampaignRequest, emails: &[String]) -> ValidCampaign {
    let rows = emails
        .iter()
        .map(|email| RecipientIn {
            email: email.clone(),
            name: None,
            data: None,
        })
        .collect();
    validate::validate(
        req,
        validate::json_rows(rows),
        Path::new("/nonexistent"),
        &Default::default(),
        Default::default(),
    )
    .unwrap()
}

async fn create(store: &Arc<dyn Store>, n: usize, batch_size: u32, now: Millis) -> String {
    create_valid(store, &campaign(n), batch_size, now).await
}

/// Stores a campaign and marks all its batches rendered.
async fn create_valid(
    store: &Arc<dyn Store>,
    c: &ValidCampaign,
    batch_size: u32,
    now: Millis,
) -> String {
    let id = store.create_campaign(c, batch_size, now).await.unwrap().id;
    for job in store
        .batches_to_render(now, now, u32::MAX, 1000)
        .await
        .unwrap()
    {
        store
            .batch_rendered(&job, &format!("k/{}", job.batch), &[], now)
            .await
            .unwrap();
    }
    id
}

fn rules(want: u32, now: Millis, cap: u32) -> LeaseRules {
    LeaseRules {
        want,
        now,
        cap,
        domains: vec![],
        margin_ms: 2_000,
        ttl_ms: 30_000,
        safety: Default::default(),
    }
}

fn report_rules(now: Millis) -> ReportRules {
    ReportRules {
        now,
        max_attempts: 3,
        resend_ambiguous: false,
    }
}

fn lease(reply: LeaseReply) -> SendLease {
    match reply {
        LeaseReply::Lease(l) => l,
        other => panic!("expected a lease, got {other:?}"),
    }
}

fn outcomes(ids: &[i64], outcome: Outcome, at: Millis) -> Vec<RecipientOutcome> {
    ids.iter()
        .map(|&recipient_id| RecipientOutcome {
            recipient_id,
            outcome: outcome.clone(),
            at,
            latency_ms: None,
        })
        .collect()
}

fn sent() -> Outcome {
    Outcome::Sent {
        provider_id: Some("p".into()),
    }
}

async fn leases_never_grant_more_than_the_cap_in_a_minute(store: Arc<dyn Store>) {
    create(&store, 500, 100, M).await;
    let mut now = M;
    let mut granted = 0;
    loop {
        match store.lease(rules(40, now, 100)).await.unwrap() {
            LeaseReply::Lease(l) => {
                // Spend by the last slot plus slack, never after the minute's deadline.
                let last_slot = l.slot(l.tokens() - 1);
                assert!(
                    l.first_at >= now && l.deadline > last_slot && l.deadline <= M + 58_000,
                    "{l:?}"
                );
                granted += l.tokens();
                store
                    .report(
                        &l.lease_id,
                        &outcomes(&l.recipients, sent(), now),
                        true,
                        report_rules(now),
                    )
                    .await
                    .unwrap();
            }
            LeaseReply::NoTokens { until } => {
                assert_eq!(until, M + 60_000);
                break;
            }
            LeaseReply::Idle => panic!("work was waiting"),
        }
        now += 250;
    }
    assert_eq!(granted, 100);
    // The next minute has a fresh budget.
    assert!(matches!(
        store.lease(rules(40, M + 60_000, 100)).await.unwrap(),
        LeaseReply::Lease(_)
    ));
    let minutes = store.minutes(&Scope::Global, M).await.unwrap();
    assert_eq!(
        (
            minutes[0].cap,
            minutes[0].granted,
            minutes[0].used,
            minutes[0].sent
        ),
        (100, 100, 100, 100)
    );
}

async fn only_the_report_that_leaves_nothing_open_says_the_campaign_drained(store: Arc<dyn Store>) {
    create(&store, 10, 100, M).await;
    let a = lease(store.lease(rules(6, M, 6_000)).await.unwrap());
    let b = lease(store.lease(rules(6, M, 6_000)).await.unwrap());
    assert_eq!((a.tokens(), b.tokens()), (6, 4));
    let report = |l: &SendLease, ids: Vec<i64>, last: bool| {
        let (store, id) = (store.clone(), l.lease_id.clone());
        async move {
            store
                .report(&id, &outcomes(&ids, sent(), M), last, report_rules(M))
                .await
                .unwrap()
                .drained
        }
    };
    assert!(!report(&a, vec![0, 1], false).await, "an interim report");
    // Closing `a` hands 2..6 back: they wait to be leased again.
    assert!(!report(&a, vec![], true).await, "2..6 wait again");
    assert!(!report(&b, vec![6, 7, 8, 9], true).await, "2..6 still wait");
    let c = lease(store.lease(rules(10, M, 6_000)).await.unwrap());
    assert_eq!(c.recipients, vec![2, 3, 4, 5]);
    assert!(!report(&c, vec![2, 3, 4, 5], false).await, "not the last");
    assert!(report(&c, vec![], true).await, "every recipient settled");
}

async fn reports_settle_recipients_and_late_reports_are_fenced(store: Arc<dyn Store>) {
    let id = create(&store, 10, 100, M).await;
    let l = lease(store.lease(rules(10, M, 6_000)).await.unwrap());
    assert_eq!(l.recipients, (0..10).collect::<Vec<_>>());
    assert_eq!(store.campaign(&id).await.unwrap().counts.in_flight, 10);
    store
        .report(
            &l.lease_id,
            &outcomes(&[0, 1, 2], sent(), M),
            false,
            report_rules(M),
        )
        .await
        .unwrap();
    store
        .report(
            &l.lease_id,
            &outcomes(
                &[3],
                Outcome::Failed {
                    reason: "bad address".into(),
                },
                M,
            ),
            false,
            report_rules(M),
        )
        .await
        .unwrap();
    store
        .report(
            &l.lease_id,
            &outcomes(
                &[4],
                Outcome::Unknown {
                    reason: "timeout".into(),
                },
                M,
            ),
            false,
            report_rules(M),
        )
        .await
        .unwrap();
    // Closing the lease hands back everything not reported.
    store
        .report(
            &l.lease_id,
            &outcomes(&[5], Outcome::Released, M),
            true,
            report_rules(M),
        )
        .await
        .unwrap();
    let k = store.campaign(&id).await.unwrap().counts;
    assert_eq!(
        (k.sent, k.failed, k.unknown, k.in_flight, k.pending),
        (3, 1, 1, 0, 5)
    );
    // A report on a closed lease changes nothing.
    let late = store
        .report(
            &l.lease_id,
            &outcomes(&[6], sent(), M),
            false,
            report_rules(M),
        )
        .await;
    assert!(matches!(late, Err(StoreError::LeaseLost(_))));
    assert_eq!(store.campaign(&id).await.unwrap().counts.sent, 3);
    let m = store.minutes(&Scope::Global, M).await.unwrap()[0];
    assert_eq!(
        (m.granted, m.used, m.sent),
        (10, 5, 3),
        "released tokens are granted but not used"
    );
    // The handed-back recipients are leased again.
    let again = lease(store.lease(rules(10, M + 1_000, 6_000)).await.unwrap());
    assert_eq!(again.recipients, (5..10).collect::<Vec<_>>());
}

async fn a_report_settles_only_what_its_own_lease_holds(store: Arc<dyn Store>) {
    let id = create(&store, 10, 100, M).await;
    let a = lease(store.lease(rules(4, M, 6_000)).await.unwrap());
    let b = lease(store.lease(rules(4, M, 6_000)).await.unwrap());
    assert_eq!(
        (a.recipients.clone(), b.recipients.clone()),
        ((0..4).collect(), (4..8).collect())
    );
    // Lease A reports B's recipients and one nobody holds, beside one of its own given twice.
    let mut mixed = outcomes(&[4, 5, 9, 0], sent(), M);
    mixed.extend(outcomes(
        &[0],
        Outcome::Failed {
            reason: "late".into(),
        },
        M,
    ));
    store
        .report(&a.lease_id, &mixed, false, report_rules(M))
        .await
        .unwrap();
    let k = store.campaign(&id).await.unwrap().counts;
    assert_eq!(
        (k.sent, k.failed, k.in_flight, k.pending),
        (1, 0, 7, 9),
        "only recipient 0 moved, by its first outcome (pending counts all not yet final)"
    );
    store
        .report(
            &b.lease_id,
            &outcomes(&[4, 5, 6, 7], sent(), M),
            true,
            report_rules(M),
        )
        .await
        .unwrap();
    assert_eq!(store.campaign(&id).await.unwrap().counts.sent, 5);
    assert!(store.recount(&id).await.unwrap().is_empty());
}

async fn deferred_recipients_wait_and_every_retry_costs_a_token(store: Arc<dyn Store>) {
    let id = create(&store, 1, 100, M).await;
    let l = lease(store.lease(rules(10, M, 6_000)).await.unwrap());
    let deferred = Outcome::Deferred {
        reason: "429".into(),
        retry_after_ms: Some(10_000),
    };
    store
        .report(
            &l.lease_id,
            &outcomes(&[0], deferred.clone(), M),
            true,
            report_rules(M),
        )
        .await
        .unwrap();
    assert_eq!(store.campaign(&id).await.unwrap().counts.deferred, 1);
    assert_eq!(
        store.lease(rules(10, M + 9_999, 6_000)).await.unwrap(),
        LeaseReply::Idle
    );
    let l = lease(store.lease(rules(10, M + 10_000, 6_000)).await.unwrap());
    assert_eq!(l.recipients, vec![0]);
    assert_eq!(
        store.minutes(&Scope::Global, M).await.unwrap()[0].granted,
        2,
        "the retry took a second token"
    );
    store
        .report(
            &l.lease_id,
            &outcomes(&[0], deferred.clone(), M + 10_000),
            true,
            report_rules(M + 10_000),
        )
        .await
        .unwrap();
    let l = lease(store.lease(rules(10, M + 20_000, 6_000)).await.unwrap());
    // Third attempt of three: given up, with the last reason.
    store
        .report(
            &l.lease_id,
            &outcomes(&[0], deferred, M + 20_000),
            true,
            report_rules(M + 20_000),
        )
        .await
        .unwrap();
    let k = store.campaign(&id).await.unwrap().counts;
    assert_eq!((k.failed, k.deferred, k.pending), (1, 0, 0));
    assert_eq!(
        k.requests, 3,
        "three provider requests for the one recipient"
    );
}

async fn a_silent_lease_holds_what_may_have_started_and_requeues_the_rest(store: Arc<dyn Store>) {
    let id = create(&store, 5, 100, M).await;
    // 60 a minute: slots about a second apart (0, 0.97, 1.93, 2.9, 3.87 s).
    let l = lease(store.lease(rules(5, M, 60)).await.unwrap());
    assert_eq!(l.tokens(), 5);
    // Last heard at M (the grant itself). Cut-off M + 2 s: slots 0..2 may have started.
    assert_eq!(
        store
            .expire_leases(l.deadline + 30_001, false)
            .await
            .unwrap(),
        3
    );
    let k = store.campaign(&id).await.unwrap().counts;
    assert_eq!((k.unknown, k.pending, k.in_flight), (3, 2, 0));
    // The two never started are leased again (next minute).
    let again = lease(store.lease(rules(5, M + 60_000, 60)).await.unwrap());
    assert_eq!(again.recipients, vec![3, 4]);
}

/// Five recipients in one lease, the first reported sent, the lease left open.
async fn five_leased_first_sent(store: &Arc<dyn Store>) -> (String, SendLease) {
    let id = create(store, 5, 100, M).await;
    let l = lease(store.lease(rules(5, M, 6_000)).await.unwrap());
    store
        .report(
            &l.lease_id,
            &outcomes(&[0], sent(), M),
            false,
            report_rules(M),
        )
        .await
        .unwrap();
    (id, l)
}

async fn an_expired_lease_makes_its_recipients_unknown_never_resent(store: Arc<dyn Store>) {
    let (id, l) = five_leased_first_sent(&store).await;
    assert_eq!(
        store
            .expire_leases(l.deadline + 29_999, false)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .expire_leases(l.deadline + 30_001, false)
            .await
            .unwrap(),
        4
    );
    let k = store.campaign(&id).await.unwrap().counts;
    assert_eq!((k.sent, k.unknown, k.pending), (1, 4, 0));
    assert_eq!(
        store.lease(rules(5, M + 120_000, 6_000)).await.unwrap(),
        LeaseReply::Idle
    );
    let late = store
        .report(
            &l.lease_id,
            &outcomes(&[1], sent(), M),
            true,
            report_rules(M),
        )
        .await;
    assert!(matches!(late, Err(StoreError::LeaseLost(_))));
    assert_eq!(
        store.complete_finished(M + 120_000).await.unwrap(),
        vec![id]
    );
}

async fn leases_go_round_robin_over_running_campaigns(store: Arc<dyn Store>) {
    let big = create(&store, 1_000, 100, M).await;
    let small = create(&store, 20, 100, M + 1).await;
    let paused = create(&store, 20, 100, M + 2).await;
    store.act(&paused, Action::Pause, M).await.unwrap();
    let mut order = Vec::new();
    for k in 0..6 {
        let l = lease(store.lease(rules(5, M + k, 6_000)).await.unwrap());
        order.push(l.campaign_id.clone());
    }
    assert_eq!(
        order,
        vec![
            big.clone(),
            small.clone(),
            big.clone(),
            small.clone(),
            big.clone(),
            small.clone()
        ]
    );
}

async fn an_account_stop_pauses_the_campaign_with_its_reason(store: Arc<dyn Store>) {
    let id = create(&store, 3, 100, M).await;
    let l = lease(store.lease(rules(3, M, 6_000)).await.unwrap());
    store
        .report(
            &l.lease_id,
            &outcomes(
                &[0],
                Outcome::AccountStop {
                    reason: "Mailgun 401: Forbidden".into(),
                },
                M,
            ),
            true,
            report_rules(M),
        )
        .await
        .unwrap();
    let c = store.campaign(&id).await.unwrap();
    assert_eq!(c.status, Status::Paused);
    assert!(c.status_reason.unwrap().contains("401"));
    assert_eq!(
        (c.counts.pending, c.counts.sent),
        (3, 0),
        "nobody lost, nobody sent"
    );
    assert_eq!(
        store.lease(rules(3, M + 1, 6_000)).await.unwrap(),
        LeaseReply::Idle
    );
    assert_eq!(
        store
            .act(&id, Action::Resume, M)
            .await
            .unwrap()
            .0
            .status_reason,
        None
    );
}

async fn cancel_settles_what_is_waiting_and_refuses_resume(store: Arc<dyn Store>) {
    let id = create(&store, 10, 100, M).await;
    let l = lease(store.lease(rules(4, M, 6_000)).await.unwrap());
    store.act(&id, Action::Cancel, M).await.unwrap();
    // The lease in flight reports its sends; what it hands back is cancelled, not re-queued.
    store
        .report(
            &l.lease_id,
            &outcomes(&[0, 1], sent(), M),
            true,
            report_rules(M),
        )
        .await
        .unwrap();
    let c = store.campaign(&id).await.unwrap();
    assert_eq!(
        (
            c.status,
            c.counts.sent,
            c.counts.cancelled,
            c.counts.pending
        ),
        (Status::Cancelled, 2, 8, 0)
    );
    assert!(matches!(
        store.act(&id, Action::Resume, M).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.act("nope", Action::Pause, M).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn render_jobs_are_handed_out_once_until_stale_and_failures_are_recorded(
    store: Arc<dyn Store>,
) {
    let c = store.create_campaign(&campaign(250), 100, M).await.unwrap();
    assert_eq!(
        (c.batches, c.counts.pending, c.counts.rendered),
        (3, 250, 0)
    );
    let jobs = store
        .batches_to_render(M - 1, M, u32::MAX, 100)
        .await
        .unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.batch).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(
        store
            .batches_to_render(M - 1, M + 10, u32::MAX, 100)
            .await
            .unwrap()
            .is_empty(),
        "handed out already"
    );
    let input = store
        .claim_render(&jobs[2], M, 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(input.recipients.len(), 50);
    assert_eq!(input.recipients[0].id, 200);
    store
        .batch_rendered(&jobs[2], "k2", &[(201, "missing field `x`".into())], M)
        .await
        .unwrap();
    store.batch_rendered(&jobs[2], "k2", &[], M).await.unwrap(); // twice: harmless
    assert!(
        store
            .claim_render(&jobs[2], M, 60_000)
            .await
            .unwrap()
            .is_none(),
        "nothing left to render"
    );
    let again = store
        .batches_to_render(M + 1, M + 2, u32::MAX, 100)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|j| j.batch).collect::<Vec<_>>(),
        vec![0, 1],
        "stale jobs are handed out again"
    );
    let c = store.campaign(&c.id).await.unwrap();
    assert_eq!(
        (c.counts.rendered, c.counts.failed, c.batches_rendered),
        (50, 1, 1)
    );
    // Only rendered recipients are leased.
    let l = lease(store.lease(rules(100, M, 6_000)).await.unwrap());
    assert_eq!(l.batch, 2);
    assert_eq!(l.body_key, "k2");
    assert_eq!(l.tokens(), 49);
}

/// Four conductors on one PostgreSQL database, eight lanes each, all leasing inside one minute: the
/// ledger grants exactly the cap and no recipient is leased twice.
#[tokio::test]
async fn conductors_sharing_postgres_never_grant_past_the_cap_nor_lease_twice() {
    let schema = crate::support::PgSchema::create().await;
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(SqlStore::open(&schema.url).await.unwrap()));
    }
    create(&stores[0], 3_000, 500, M).await;
    let mut lanes = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        for lane in 0..8 {
            let store = store.clone();
            lanes.push(tokio::spawn(async move {
                let mut leased = Vec::new();
                let mut now = M + (i * 8 + lane) as i64;
                let mut idle = 0;
                loop {
                    match store.lease(rules(37, now, 700)).await.unwrap() {
                        LeaseReply::Lease(l) => {
                            leased.extend(l.recipients.iter().copied());
                            store
                                .report(
                                    &l.lease_id,
                                    &outcomes(&l.recipients, sent(), now),
                                    true,
                                    report_rules(now),
                                )
                                .await
                                .unwrap();
                        }
                        LeaseReply::NoTokens { .. } => return leased,
                        // Every sendable row was momentarily held by other lanes: ask again.
                        LeaseReply::Idle => {
                            idle += 1;
                            assert!(idle < 1_000, "never got work although work was waiting");
                            tokio::task::yield_now().await;
                        }
                    }
                    now += 50;
                }
            }));
        }
    }
    let mut all = Vec::new();
    for lane in lanes {
        all.extend(lane.await.unwrap());
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (total, all.len()),
        (700, 700),
        "exactly the cap, nobody twice"
    );
    let m = stores[1].minutes(&Scope::Global, M).await.unwrap()[0];
    assert_eq!((m.cap, m.granted, m.used), (700, 700, 700));
    drop(stores);
    schema.drop().await;
}

async fn one_renderer_holds_a_batch_until_its_claim_lapses(store: Arc<dyn Store>) {
    let c = store.create_campaign(&campaign(10), 100, M).await.unwrap();
    let job = store
        .batches_to_render(M, M, u32::MAX, 10)
        .await
        .unwrap()
        .remove(0);
    // Two renderers hear the same doorbell: the first claims, the second is told to drop it.
    let first = store.claim_render(&job, M, 60_000).await.unwrap();
    assert_eq!(first.unwrap().recipients.len(), 10);
    assert!(store
        .claim_render(&job, M + 1_000, 60_000)
        .await
        .unwrap()
        .is_none());
    // The first one died: after the hold, another may take it.
    assert!(store
        .claim_render(&job, M + 61_000, 60_000)
        .await
        .unwrap()
        .is_some());
    store
        .batch_rendered(&job, "k", &[], M + 62_000)
        .await
        .unwrap();
    assert!(store
        .claim_render(&job, M + 200_000, 60_000)
        .await
        .unwrap()
        .is_none());
    store.act(&c.id, Action::Cancel, M).await.unwrap();
    let c2 = store.create_campaign(&campaign(5), 100, M).await.unwrap();
    let job2 = store
        .batches_to_render(M, M, u32::MAX, 10)
        .await
        .unwrap()
        .remove(0);
    store.act(&c2.id, Action::Cancel, M).await.unwrap();
    assert!(
        store
            .claim_render(&job2, M, 60_000)
            .await
            .unwrap()
            .is_none(),
        "a cancelled campaign needs no rendering"
    );
}

async fn lifecycle_transitions_are_reported_once_and_bodies_purged_after_retention(
    store: Arc<dyn Store>,
) {
    let id = create(&store, 3, 100, M).await;
    assert!(
        store.mark_started(M).await.unwrap().is_empty(),
        "nothing leased yet"
    );
    let l = lease(store.lease(rules(3, M, 100)).await.unwrap());
    assert_eq!(store.mark_started(M + 1).await.unwrap(), vec![id.clone()]);
    assert!(store.mark_started(M + 2).await.unwrap().is_empty(), "once");
    assert!(
        store
            .bodies_to_purge(M + 10_000_000)
            .await
            .unwrap()
            .is_empty(),
        "still running"
    );
    store
        .report(
            &l.lease_id,
            &outcomes(&l.recipients, sent(), M + 1),
            true,
            report_rules(M + 1),
        )
        .await
        .unwrap();
    assert_eq!(
        store.complete_finished(M + 2).await.unwrap(),
        vec![id.clone()]
    );
    assert!(
        store.complete_finished(M + 3).await.unwrap().is_empty(),
        "once"
    );
    assert!(
        store.bodies_to_purge(M + 2).await.unwrap().is_empty(),
        "within retention"
    );
    assert_eq!(
        store.bodies_to_purge(M + 3).await.unwrap(),
        vec![id.clone()]
    );
    store.bodies_purged(&id, M + 3).await.unwrap();
    assert!(
        store
            .bodies_to_purge(M + 10_000_000)
            .await
            .unwrap()
            .is_empty(),
        "done once"
    );

    assert!(
        matches!(
            store.act(&id, Action::Cancel, M).await,
            Err(StoreError::Conflict(_))
        ),
        "a completed campaign stays so"
    );
    let other = create(&store, 2, 100, M).await;
    assert!(store.act(&other, Action::Pause, M).await.unwrap().1);
    assert!(
        !store.act(&other, Action::Pause, M).await.unwrap().1,
        "no change, no event"
    );
}

async fn a_complaint_suppresses_the_address_before_its_next_send_and_in_new_campaigns(
    store: Arc<dyn Store>,
) {
    let id = create(&store, 3, 100, M).await; // rendered, nothing leased yet
    let complaint = conductor::domain::feedback::Event {
        key: "mailgun:tok-1".into(),
        provider: "mailgun",
        kind: conductor::domain::feedback::Kind::Complaint,
        email: "r1@example.com".into(),
        campaign_id: Some(id.clone()),
        recipient_id: Some(1),
        detail: None,
    };
    assert!(store.record_feedback(&complaint, M).await.unwrap());
    assert!(
        !store.record_feedback(&complaint, M).await.unwrap(),
        "recorded once"
    );
    let l = lease(store.lease(rules(3, M, 100)).await.unwrap());
    assert_eq!(l.recipients, vec![0, 2], "the complainer is not leased");
    let c = store.campaign(&id).await.unwrap();
    assert_eq!(c.counts.suppressed, 1);
    // A delivered event records, suppresses nothing.
    let delivered = conductor::domain::feedback::Event {
        key: "mailgun:tok-2".into(),
        kind: conductor::domain::feedback::Kind::Delivered,
        email: "r2@example.com".into(),
        ..complaint.clone()
    };
    assert!(store.record_feedback(&delivered, M).await.unwrap());
    let again = store.create_campaign(&campaign(3), 100, M).await.unwrap();
    assert_eq!(
        again.counts.suppressed, 1,
        "the list carries the complainer into new campaigns as suppressed"
    );
    // One in a later batch of the same chunk is found as well.
    let late = conductor::domain::feedback::Event {
        key: "mailgun:tok-3".into(),
        email: "r201@example.com".into(),
        ..complaint.clone()
    };
    assert!(store.record_feedback(&late, M).await.unwrap());
    let three_batches = store.create_campaign(&campaign(250), 100, M).await.unwrap();
    assert_eq!(three_batches.counts.suppressed, 2);
}

async fn unknown_recipients_are_listed_and_sent_again_only_on_request(store: Arc<dyn Store>) {
    let (id, l) = five_leased_first_sent(&store).await;
    store
        .expire_leases(l.deadline + 60_000, false)
        .await
        .unwrap();
    assert_eq!(
        store.complete_finished(M + 120_000).await.unwrap(),
        vec![id.clone()]
    );
    let unknown = store
        .recipients(&id, Some(RecipientState::Unknown), -1, 100)
        .await
        .unwrap();
    assert_eq!(
        unknown.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(unknown[0].reason.is_some(), "{:?}", unknown[0]);
    let page = store.recipients(&id, None, 1, 2).await.unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 3]);
    assert!(matches!(
        store.recipients("nope", None, -1, 10).await,
        Err(StoreError::NotFound(_))
    ));

    // On request: back in the queue, the campaign running again; the sent one stays sent.
    assert_eq!(
        store
            .retry(&id, &[RecipientState::Unknown], M + 130_000)
            .await
            .unwrap(),
        4
    );
    let c = store.campaign(&id).await.unwrap();
    assert_eq!(c.status, Status::Running);
    assert_eq!((c.counts.sent, c.counts.unknown), (1, 0));
    let again = lease(store.lease(rules(5, M + 180_000, 6_000)).await.unwrap());
    assert_eq!(again.recipients, vec![1, 2, 3, 4]);
    // Nothing else is retryable, and a cancelled campaign is not retried at all.
    assert_eq!(
        store.retry(&id, &[RecipientState::Sent], M).await.unwrap(),
        0
    );
    store.act(&id, Action::Cancel, M).await.unwrap();
    assert!(matches!(
        store.retry(&id, &[RecipientState::Unknown], M).await,
        Err(StoreError::Conflict(_))
    ));
}

fn with_rules(want: u32, now: Millis, cap: u32, domains: &[(&str, u32)]) -> LeaseRules {
    LeaseRules {
        domains: domains.iter().map(|(d, c)| (d.to_string(), *c)).collect(),
        ..rules(want, now, cap)
    }
}

async fn campaign_and_domain_caps_bind_under_the_global_one(store: Arc<dyn Store>) {
    // A: capped at 10/min; a third of its list at gmail.com, capped at 4/min for everyone.
    let emails: Vec<String> = (0..30)
        .map(|i| {
            if i % 3 == 0 {
                format!("g{i}@gmail.com")
            } else {
                format!("r{i}@example.com")
            }
        })
        .collect();
    let a = create_valid(
        &store,
        &campaign_of(
            CampaignRequest {
                per_minute: Some(10),
                ..request()
            },
            &emails,
        ),
        100,
        M,
    )
    .await;
    let b = create(&store, 50, 100, M + 1).await;
    let domains = [("gmail.com", 4)];
    let (mut a_got, mut gmail, mut b_got) = (0, 0, 0);
    let mut now = M;
    while now < M + 50_000 {
        match store
            .lease(with_rules(3, now, 100, &domains))
            .await
            .unwrap()
        {
            LeaseReply::Lease(l) => {
                let c = store.campaign(&l.campaign_id).await.unwrap();
                let ids = &l.recipients;
                if l.campaign_id == a {
                    a_got += ids.len();
                    // One domain group per lease: all gmail.com or none.
                    let g = ids
                        .iter()
                        .filter(|&&i| emails[i as usize].ends_with("@gmail.com"))
                        .count();
                    assert!(g == 0 || g == ids.len(), "{ids:?} mixes domain groups");
                    gmail += g;
                } else {
                    assert_eq!(c.id, b);
                    b_got += ids.len();
                }
                store
                    .report(
                        &l.lease_id,
                        &outcomes(ids, sent(), now),
                        true,
                        report_rules(now),
                    )
                    .await
                    .unwrap();
            }
            LeaseReply::NoTokens { .. } | LeaseReply::Idle => {}
        }
        now += 200;
    }
    assert_eq!(a_got, 10, "the campaign's own cap binds");
    assert_eq!(
        gmail, 4,
        "the domain cap binds, and the rest of A's list still went"
    );
    // B is not held back by A's cap: it gets the rest of the global budget, up to its list.
    assert_eq!(b_got, 50);
    let minute = |scope: Scope| {
        let store = store.clone();
        async move { store.minutes(&scope, M).await.unwrap()[0] }
    };
    let ca = minute(Scope::Campaign(a.clone())).await;
    assert_eq!((ca.cap, ca.granted, ca.used, ca.sent), (10, 10, 10, 10));
    let g = minute(Scope::Domain("gmail.com".into())).await;
    assert_eq!((g.cap, g.granted, g.sent), (4, 4, 4));
    let global = minute(Scope::Global).await;
    assert_eq!((global.granted, global.sent), (60, 60));
    let rows = store.minute_rows(M).await.unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
}

async fn leases_are_shared_by_priority(store: Arc<dyn Store>) {
    let bulk = create(&store, 1_000, 100, M).await;
    // Some leases for the bulk campaign alone first.
    for k in 0..5 {
        assert_eq!(
            lease(store.lease(rules(5, M + k, 60_000)).await.unwrap()).campaign_id,
            bulk
        );
    }
    let urgent = create_valid(
        &store,
        &campaign_of(
            CampaignRequest {
                priority: Some(3),
                ..request()
            },
            &(0..100)
                .map(|i| format!("u{i}@example.com"))
                .collect::<Vec<_>>(),
        ),
        100,
        M + 10,
    )
    .await;
    let mut picks = Vec::new();
    for k in 0..40 {
        picks.push(lease(store.lease(rules(1, M + 20 + k, 60_000)).await.unwrap()).campaign_id);
    }
    assert_eq!(
        picks.iter().filter(|p| **p == urgent).count(),
        30,
        "{picks:?}"
    );
    // From its very first lease, and never more than three in a row.
    assert!(picks[..2].contains(&urgent));
    for w in picks.windows(4) {
        assert!(w.contains(&bulk), "{picks:?}");
    }
}

async fn scheduled_campaigns_wait_for_send_at_and_their_window(store: Arc<dyn Store>) {
    let later = create_valid(
        &store,
        &campaign_of(
            CampaignRequest {
                send_at: Some(conductor::store::rfc3339(M + 120_000)),
                ..request()
            },
            &["a@example.com".to_string()],
        ),
        100,
        M,
    )
    .await;
    // A window of 13:00–14:00 UTC; M is 22:14 UTC.
    let windowed = create_valid(
        &store,
        &campaign_of(
            CampaignRequest {
                window: Some(conductor::domain::schedule::SendWindow {
                    hours: "13:00-14:00".into(),
                    timezone: "UTC".into(),
                    days: vec![],
                }),
                ..request()
            },
            &["b@example.com".to_string()],
        ),
        100,
        M,
    )
    .await;
    assert_eq!(
        store.lease(rules(5, M, 600)).await.unwrap(),
        LeaseReply::Idle
    );
    assert_eq!(
        store.lease(rules(5, M + 119_999, 600)).await.unwrap(),
        LeaseReply::Idle
    );
    let l = lease(store.lease(rules(5, M + 120_000, 600)).await.unwrap());
    assert_eq!(l.campaign_id, later);
    // The next day at 13:30 UTC the window is open.
    let day = 86_400_000;
    let at_1330 = M - (M % day) + day + 13 * 3_600_000 + 30 * 60_000;
    let l = lease(store.lease(rules(5, at_1330, 600)).await.unwrap());
    assert_eq!(l.campaign_id, windowed);
    let c = store.campaign(&windowed).await.unwrap();
    assert_eq!(c.window.unwrap().hours, "13:00-14:00");
}

async fn a_campaign_cap_change_applies_next_minute_and_is_audited(store: Arc<dyn Store>) {
    let id = create_valid(
        &store,
        &campaign_of(
            CampaignRequest {
                per_minute: Some(10),
                ..request()
            },
            &(0..100)
                .map(|i| format!("r{i}@example.com"))
                .collect::<Vec<_>>(),
        ),
        100,
        M,
    )
    .await;
    let granted = |want: u32, now: Millis| {
        let store = store.clone();
        async move {
            let mut got = 0;
            loop {
                match store.lease(rules(want, now, 600)).await.unwrap() {
                    LeaseReply::Lease(l) => got += l.tokens(),
                    _ => return got,
                }
            }
        }
    };
    // Four of this minute's ten tokens before the change.
    for k in 0..4 {
        assert_eq!(
            lease(store.lease(rules(1, M + k, 600)).await.unwrap()).tokens(),
            1
        );
    }
    let c = store
        .set_limits(&id, Some(Some(3)), Some(5), M + 1_000)
        .await
        .unwrap();
    assert_eq!((c.per_minute, c.priority), (Some(3), 5));
    // This minute keeps the cap it opened with; the next has the new one.
    assert_eq!(granted(10, M + 2_000).await, 6);
    assert_eq!(granted(10, M + 60_000).await, 3);
    let audit = store.audit(10).await.unwrap();
    let scopes: Vec<(&str, &str, Option<&str>, Option<&str>)> = audit
        .iter()
        .map(|e| {
            (
                e.scope.as_str(),
                e.kind.as_str(),
                e.old.as_deref(),
                e.new.as_deref(),
            )
        })
        .collect();
    assert!(
        scopes.contains(&(&format!("campaign:{id}"), "cap", Some("10"), Some("3"))),
        "{audit:?}"
    );
    assert!(
        scopes.contains(&(&format!("campaign:{id}"), "priority", Some("1"), Some("5"))),
        "{audit:?}"
    );
    assert_eq!(audit[0].source, format!("PUT /v1/campaigns/{id}"));
    // Removing the cap; garbage and finished campaigns are refused.
    let c = store
        .set_limits(&id, Some(None), None, M + 70_000)
        .await
        .unwrap();
    assert_eq!(c.per_minute, None);
    assert!(matches!(
        store.set_limits("nope", Some(Some(1)), None, M).await,
        Err(StoreError::NotFound(_))
    ));
    store.act(&id, Action::Cancel, M + 71_000).await.unwrap();
    assert!(matches!(
        store.set_limits(&id, Some(Some(1)), None, M + 72_000).await,
        Err(StoreError::Conflict(_))
    ));
}

/// Unsubscribed after a send that failed, one in doubt and one deferred: the retry on request and
/// the deferral coming due lease none of them. The list's spelling and the event's differ in case and
/// in how the domain is written (Unicode or IDNA), as they do in life.
async fn a_suppressed_address_is_never_leased_by_any_path(store: Arc<dyn Store>) {
    let emails: Vec<String> = [
        "a@example.com",
        "Zoë@Bücher.de",
        "c@example.com",
        "d@example.com",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let id = create_valid(&store, &campaign_of(request(), &emails), 100, M).await;
    let l = lease(store.lease(rules(4, M, 6_000)).await.unwrap());
    assert_eq!(l.recipients, vec![0, 1, 2, 3]);
    let mut report = outcomes(&[0], sent(), M);
    report.extend(outcomes(
        &[1],
        Outcome::Failed {
            reason: "mailbox full".into(),
        },
        M,
    ));
    report.extend(outcomes(
        &[2],
        Outcome::Unknown {
            reason: "no answer".into(),
        },
        M,
    ));
    report.extend(outcomes(
        &[3],
        Outcome::Deferred {
            reason: "try later".into(),
            retry_after_ms: Some(1_000),
        },
        M,
    ));
    store
        .report(&l.lease_id, &report, true, report_rules(M))
        .await
        .unwrap();
    for (n, email) in ["ZOË@xn--bcher-kva.de", "C@EXAMPLE.com", "d@example.com"]
        .iter()
        .enumerate()
    {
        let event = conductor::domain::feedback::Event {
            key: format!("list-unsubscribe:{n}"),
            provider: "list-unsubscribe",
            kind: conductor::domain::feedback::Kind::Unsubscribe,
            email: email.to_string(),
            campaign_id: Some(id.clone()),
            recipient_id: None,
            detail: None,
        };
        assert!(store.record_feedback(&event, M + 1_000).await.unwrap());
    }
    let requeued = store
        .retry(
            &id,
            &[RecipientState::Failed, RecipientState::Unknown],
            M + 2_000,
        )
        .await
        .unwrap();
    assert!(requeued <= 2);
    // Two minutes on, everything that could be leased is asked for: nothing comes.
    let reply = store.lease(rules(10, M + 120_000, 6_000)).await.unwrap();
    assert!(matches!(reply, LeaseReply::Idle), "{reply:?}");
    let all = store.recipients(&id, None, -1, 10).await.unwrap();
    let states: Vec<(&str, &str)> = all
        .iter()
        .map(|r| (r.email.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("a@example.com", "sent"),
            ("Zoë@Bücher.de", "suppressed"),
            ("c@example.com", "suppressed"),
            ("d@example.com", "suppressed"),
        ]
    );
    // New campaigns store the address as suppressed whichever way it is written.
    let again = store
        .create_campaign(
            &campaign_of(request(), &["zoë@bücher.DE".to_string()]),
            100,
            M,
        )
        .await
        .unwrap();
    assert_eq!(again.counts.suppressed, 1);
}

/// The sandbox is read at each lease: turned on after creation, it stops the next send to a stranger.
async fn the_sandbox_in_force_at_lease_time_decides(store: Arc<dyn Store>) {
    let emails: Vec<String> = ["ok@example.com", "real.person@customer.test"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let id = create_valid(&store, &campaign_of(request(), &emails), 100, M).await;
    let sandbox = sender::safety::Safety {
        sandbox: true,
        allow_domains: vec!["example.com".into()],
        allow_addresses: vec![],
    };
    let l = lease(
        store
            .lease(LeaseRules {
                safety: sandbox,
                ..rules(5, M, 6_000)
            })
            .await
            .unwrap(),
    );
    assert_eq!(l.recipients, vec![0]);
    let stranger = store
        .recipients(&id, Some(RecipientState::Failed), -1, 10)
        .await
        .unwrap();
    assert_eq!(stranger.len(), 1);
    assert_eq!(stranger[0].email, "real.person@customer.test");
    assert!(
        stranger[0].reason.as_deref().unwrap().contains("sandbox"),
        "{stranger:?}"
    );
}

/// A sender that cannot read a lease's batch says so; the batch is rendered again from the store, and
/// a batch that stays unreadable fails its recipients with the reason instead of being leased forever.
async fn an_unreadable_batch_is_rendered_again_then_its_recipients_fail(store: Arc<dyn Store>) {
    let id = create(&store, 3, 100, M).await;
    let unreadable = |ids: &[i64]| {
        outcomes(
            ids,
            Outcome::Unreadable {
                reason: "no such object".into(),
            },
            M,
        )
    };
    let mut now = M;
    for round in 1..=4 {
        let l = lease(store.lease(rules(3, now, 6_000)).await.unwrap());
        assert_eq!(l.recipients, vec![0, 1, 2], "round {round}");
        store
            .report(
                &l.lease_id,
                &unreadable(&l.recipients),
                true,
                report_rules(now),
            )
            .await
            .unwrap();
        let c = store.campaign(&id).await.unwrap();
        assert_eq!(c.counts.requests, 0, "nothing was attempted");
        if round < 4 {
            // Back to be rendered: nothing to lease until it is.
            let reply = store.lease(rules(3, now, 6_000)).await.unwrap();
            assert!(matches!(reply, LeaseReply::Idle), "{reply:?}");
            let jobs = store
                .batches_to_render(now, now, u32::MAX, 10)
                .await
                .unwrap();
            assert_eq!(jobs.len(), 1, "round {round}");
            assert!(store
                .claim_render(&jobs[0], now, 30_000)
                .await
                .unwrap()
                .is_some());
            store
                .batch_rendered(&jobs[0], "k/0", &[], now)
                .await
                .unwrap();
        }
        now += 60_000;
    }
    let failed = store
        .recipients(&id, Some(RecipientState::Failed), -1, 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 3);
    assert!(
        failed[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("could not be read"),
        "{failed:?}"
    );
}

/// Drives random transitions — creation with suppressed addresses, rendering with failures, leases
/// under a spent domain, every kind of outcome, silent senders, cancel, retry, complaints — and
/// checks after every step that the kept counters equal a full recount of the rows.
async fn counters_always_equal_a_full_recount(store: Arc<dyn Store>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut now = M;
    let complaint = |email: String, key: u32| conductor::domain::feedback::Event {
        key: format!("mailgun:prop-{key}"),
        provider: "mailgun",
        kind: conductor::domain::feedback::Kind::Complaint,
        email,
        campaign_id: None,
        recipient_id: None,
        detail: None,
    };
    store
        .record_feedback(&complaint("r3@gmail.com".into(), 0), now)
        .await
        .unwrap();
    let mut ids = Vec::new();
    let mut leases: Vec<SendLease> = Vec::new();
    let domains = ["gmail.com", "example.com", "Yahoo.com"];
    for step in 0..120u32 {
        now += rng.random_range(0..4_000);
        let what = if ids.is_empty() {
            0
        } else {
            rng.random_range(0..10)
        };
        match what {
            0 => {
                let n = rng.random_range(1..40);
                let emails: Vec<String> = (0..n)
                    .map(|i| format!("r{i}@{}", domains[i % domains.len()]))
                    .collect();
                let c = campaign_of(request(), &emails);
                let id = store.create_campaign(&c, 7, now).await.unwrap().id;
                ids.push(id);
            }
            1 => {
                for job in store
                    .batches_to_render(now - 60_000, now, rng.random_range(1..30), 3)
                    .await
                    .unwrap()
                {
                    let Some(input) = store.claim_render(&job, now, 60_000).await.unwrap() else {
                        continue;
                    };
                    let failed: Vec<(i64, String)> = input
                        .recipients
                        .iter()
                        .filter(|_| rng.random_bool(0.1))
                        .map(|r| (r.id, "bad data".to_string()))
                        .collect();
                    store
                        .batch_rendered(&job, &format!("k/{step}"), &failed, now)
                        .await
                        .unwrap();
                }
            }
            2 | 3 => {
                let mut r = with_rules(rng.random_range(1..6), now, 1_000, &[("gmail.com", 3)]);
                r.safety = if rng.random_bool(0.2) {
                    sender::safety::Safety {
                        sandbox: true,
                        allow_domains: vec!["example.com".into()],
                        ..Default::default()
                    }
                } else {
                    Default::default()
                };
                if let LeaseReply::Lease(l) = store.lease(r).await.unwrap() {
                    leases.push(l);
                }
            }
            4 | 5 if !leases.is_empty() => {
                let l = leases.swap_remove(rng.random_range(0..leases.len()));
                let kinds = [
                    sent(),
                    Outcome::Failed {
                        reason: "550".into(),
                    },
                    Outcome::Deferred {
                        reason: "421".into(),
                        retry_after_ms: Some(rng.random_range(0..5_000)),
                    },
                    Outcome::Throttled {
                        reason: "429".into(),
                        retry_after_ms: None,
                    },
                    Outcome::Unknown {
                        reason: "timeout".into(),
                    },
                    Outcome::Released,
                    Outcome::AccountStop {
                        reason: "401".into(),
                    },
                    Outcome::Unreadable {
                        reason: "zstd".into(),
                    },
                ];
                let mut told = Vec::new();
                for &recipient_id in &l.recipients {
                    if rng.random_bool(0.8) {
                        told.push(RecipientOutcome {
                            recipient_id,
                            outcome: kinds[rng.random_range(0..kinds.len())].clone(),
                            at: now,
                            latency_ms: None,
                        });
                    }
                }
                let last = rng.random_bool(0.7);
                let mut rr = report_rules(now);
                rr.resend_ambiguous = rng.random_bool(0.3);
                match store.report(&l.lease_id, &told, last, rr).await {
                    Ok(_) | Err(StoreError::LeaseLost(_)) => {}
                    Err(e) => panic!("report: {e}"),
                }
                if !last {
                    leases.push(l);
                }
            }
            6 => {
                now += 120_000;
                store
                    .expire_leases(now, rng.random_bool(0.5))
                    .await
                    .unwrap();
            }
            7 => {
                let id = &ids[rng.random_range(0..ids.len())];
                let action =
                    [Action::Pause, Action::Resume, Action::Cancel][rng.random_range(0..3)];
                let _ = store.act(id, action, now).await;
            }
            8 => {
                let id = &ids[rng.random_range(0..ids.len())];
                let states = [RecipientState::Failed, RecipientState::Unknown];
                let _ = store.retry(id, &states, now).await;
            }
            _ => {
                let i = rng.random_range(0..40);
                let email = format!("r{i}@{}", domains[i % domains.len()]);
                store
                    .record_feedback(&complaint(email, step + 1), now)
                    .await
                    .unwrap();
                store.sweep_cancelled(now, 1_000).await.unwrap();
            }
        }
        for id in &ids {
            let wrong = store.recount(id).await.unwrap();
            assert!(
                wrong.is_empty(),
                "step {step} ({what}), campaign {id}: {wrong:?}"
            );
        }
    }
    // The walk reached the states the counters keep, so the check above was not vacuous.
    let mut seen = conductor::store::Counts::default();
    for id in &ids {
        let c = store.campaign(id).await.unwrap().counts;
        seen.sent += c.sent;
        seen.failed += c.failed;
        seen.deferred += c.deferred + c.unknown;
        seen.suppressed += c.suppressed;
        seen.cancelled += c.cancelled;
        seen.in_flight += c.in_flight;
    }
    assert!(
        seen.sent > 0 && seen.failed > 0 && seen.suppressed > 0 && seen.cancelled > 0,
        "{seen:?}"
    );
}

/// Rendering follows sending: only a window of batches is rendered ahead, and it moves on as batches
/// are sent.
async fn rendering_stays_a_window_ahead_of_sending(store: Arc<dyn Store>) {
    let id = store
        .create_campaign(&campaign(100), 10, M)
        .await
        .unwrap()
        .id;
    let jobs = store.batches_to_render(M, M, 30, 100).await.unwrap();
    let batches: Vec<u32> = jobs.iter().map(|j| j.batch).collect();
    assert_eq!(
        batches,
        [0, 1, 2],
        "30 recipients ahead: three batches of ten"
    );
    assert!(
        store
            .batches_to_render(M, M, 30, 100)
            .await
            .unwrap()
            .is_empty(),
        "batches being rendered fill the window"
    );
    for job in &jobs {
        store.batch_rendered(job, "k", &[], M).await.unwrap();
    }
    assert!(store
        .batches_to_render(M, M, 30, 100)
        .await
        .unwrap()
        .is_empty());
    // Sending batch 0 whole frees one place in the window.
    let l = lease(store.lease(rules(10, M, 1_000)).await.unwrap());
    assert_eq!((l.batch, l.recipients.len()), (0, 10));
    store
        .report(
            &l.lease_id,
            &outcomes(&l.recipients, sent(), M),
            true,
            report_rules(M),
        )
        .await
        .unwrap();
    let next: Vec<u32> = store
        .batches_to_render(M, M, 30, 100)
        .await
        .unwrap()
        .iter()
        .map(|j| j.batch)
        .collect();
    assert_eq!(next, [3]);
    let c = store.campaign(&id).await.unwrap();
    assert_eq!(
        (c.batches, c.batches_rendered, c.counts.rendered),
        (10, 3, 30)
    );
    assert!(store.recount(&id).await.unwrap().is_empty());
}

/// Leases come from the batch cursor: the lowest batch with rendered recipients, or a deferred
/// recipient that came due (first), wherever it is in the campaign.
async fn leases_follow_the_batch_cursor_and_deferrals_come_due_first(store: Arc<dyn Store>) {
    let id = create(&store, 50, 10, M).await;
    let a = lease(store.lease(rules(10, M, 1_000)).await.unwrap());
    assert_eq!((a.batch, a.recipients[0]), (0, 0));
    let deferral = Outcome::Deferred {
        reason: "421".into(),
        retry_after_ms: Some(5_000),
    };
    let mut told = outcomes(&a.recipients[..2], deferral, M);
    told.extend(outcomes(&a.recipients[2..], sent(), M));
    store
        .report(&a.lease_id, &told, true, report_rules(M))
        .await
        .unwrap();
    // Not due yet: the cursor moves on to batch 1.
    let b = lease(store.lease(rules(10, M + 1_000, 1_000)).await.unwrap());
    assert_eq!(b.batch, 1);
    store
        .report(
            &b.lease_id,
            &outcomes(&b.recipients, sent(), M + 1_000),
            true,
            report_rules(M + 1_000),
        )
        .await
        .unwrap();
    // Due: the two deferred recipients of batch 0 come before batch 2.
    let c = lease(store.lease(rules(10, M + 6_000, 1_000)).await.unwrap());
    assert_eq!((c.batch, c.recipients.clone()), (0, vec![0, 1]));
    let d = lease(store.lease(rules(10, M + 6_000, 1_000)).await.unwrap());
    assert_eq!((d.batch, d.recipients[0]), (2, 20));
    assert!(store.recount(&id).await.unwrap().is_empty());
    let counts = store.campaign(&id).await.unwrap().counts;
    assert_eq!(
        (counts.sent, counts.in_flight, counts.pending),
        (18, 12, 32)
    );
}

/// An import whose uploader fell silent (killed, or its conductor) is discarded: hidden at once, its
/// rows removed by the purge, its idempotency key free for a new attempt; a draft's failed upload
/// leaves the draft with no list.
async fn an_import_not_heard_from_is_discarded_and_its_rows_purged(store: Arc<dyn Store>) {
    use conductor::store::{IdempotencyKey, Opened, IMPORT_SILENCE_MS};
    let c = campaign(30);
    let key = IdempotencyKey {
        key: "k1".into(),
        fingerprint: "f".into(),
    };
    let Opened::New(half) = store
        .create_empty(&(&c).into(), 10, M, Status::Importing, Some(&key))
        .await
        .unwrap()
    else {
        panic!("a new campaign")
    };
    assert_eq!(half.status, Status::Importing);
    assert_eq!(
        store
            .import_chunk(&half.id, &c.recipients[..20], M)
            .await
            .unwrap(),
        0
    );
    let seen = store.campaign(&half.id).await.unwrap();
    assert_eq!(
        (seen.counts.total, seen.batches),
        (20, 0),
        "batches are counted when the list is whole"
    );
    assert!(
        matches!(
            store
                .create_empty(&(&c).into(), 10, M, Status::Importing, Some(&key))
                .await,
            Err(StoreError::Conflict(_))
        ),
        "a retry while the first is importing waits"
    );
    assert!(store
        .batches_to_render(M, M, u32::MAX, 100)
        .await
        .unwrap()
        .is_empty());
    let heard = M + 5_000;
    store.touch_import(&half.id, heard).await.unwrap();
    assert!(store
        .abandon_stale_imports(heard, heard + IMPORT_SILENCE_MS)
        .await
        .unwrap()
        .is_empty());
    let later = heard + IMPORT_SILENCE_MS + 1;
    assert_eq!(
        store.abandon_stale_imports(heard + 1, later).await.unwrap(),
        std::slice::from_ref(&half.id)
    );
    assert!(matches!(
        store.campaign(&half.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.campaigns().await.unwrap().is_empty());
    assert!(matches!(
        store
            .import_chunk(&half.id, &c.recipients[20..], later)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.purge(1_000, M).await.unwrap(), 20);
    assert_eq!(store.purge(1_000, M).await.unwrap(), 0);
    assert!(matches!(
        store.recount(&half.id).await,
        Err(StoreError::NotFound(_))
    ));
    let Opened::New(fresh) = store
        .create_empty(&(&c).into(), 10, later, Status::Importing, Some(&key))
        .await
        .unwrap()
    else {
        panic!("the key was freed with the discarded campaign")
    };
    assert_ne!(fresh.id, half.id);

    // A draft: its list replaced, then an upload that fails leaves it with none.
    let Opened::New(draft) = store
        .create_empty(&(&c).into(), 10, later, Status::Draft, None)
        .await
        .unwrap()
    else {
        panic!("a draft")
    };
    assert!(
        matches!(
            store.import_chunk(&draft.id, &c.recipients, later).await,
            Err(StoreError::Conflict(_))
        ),
        "no rows without an upload"
    );
    store.begin_upload(&draft.id, later).await.unwrap();
    assert!(
        matches!(
            store.begin_upload(&draft.id, later).await,
            Err(StoreError::Conflict(_))
        ),
        "one upload at a time"
    );
    store
        .import_chunk(&draft.id, &c.recipients, later)
        .await
        .unwrap();
    let listed = store.finish_import(&draft.id, later, false).await.unwrap();
    assert_eq!(
        (listed.status, listed.counts.total, listed.batches),
        (Status::Draft, 30, 3)
    );
    store.begin_upload(&draft.id, later).await.unwrap();
    assert_eq!(
        store.campaign(&draft.id).await.unwrap().counts.total,
        0,
        "the old list is gone"
    );
    store
        .import_chunk(&draft.id, &c.recipients[..5], later)
        .await
        .unwrap();
    store.abandon_import(&draft.id, later).await.unwrap();
    let empty = store.campaign(&draft.id).await.unwrap();
    assert_eq!(
        (empty.status, empty.counts.total, empty.batches),
        (Status::Draft, 0, 0)
    );
    assert!(matches!(
        store.start(&draft.id, later).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.recount(&draft.id).await.unwrap().is_empty());
}

async fn finished_history_is_pruned_and_the_metrics_totals_kept(store: Arc<dyn Store>) {
    const DAY: Millis = 24 * 3_600_000;
    create(&store, 30, 100, M).await;
    // Minute M: a lease, six of its recipients sent, the lease closed; its other tokens forfeited.
    let old = lease(store.lease(rules(10, M, 100)).await.unwrap());
    assert!(old.recipients.len() > 6);
    let report = outcomes(&old.recipients[..6], sent(), M);
    store
        .report(&old.lease_id, &report, true, report_rules(M))
        .await
        .unwrap();
    // Nine days on: a lease sent whole, and a lease still open.
    let later = M + 9 * DAY;
    let new = lease(store.lease(rules(5, later, 100)).await.unwrap());
    let report = outcomes(&new.recipients, sent(), later);
    store
        .report(&new.lease_id, &report, true, report_rules(later))
        .await
        .unwrap();
    let open = lease(store.lease(rules(3, later, 100)).await.unwrap());
    let (old_n, new_n, open_n) = (
        old.recipients.len() as u64,
        new.recipients.len() as u64,
        open.recipients.len() as u64,
    );
    // A minute over is counted forfeited for what it granted and did not use.
    let totals = store.metrics_view(later + 60_000).await.unwrap().ledger;
    assert_eq!(
        totals,
        vec![(
            "global".to_string(),
            old_n + new_n + open_n,
            old_n - 6 + open_n
        )]
    );

    // Leases closed over a day ago and minutes over eight days old go; the counters stay.
    let removed = store
        .prune_history(later + 1, later - 8 * DAY, 1_000)
        .await
        .unwrap();
    assert_eq!(removed, 2 + 1, "two closed leases and one ledger minute");
    assert_eq!(
        store.metrics_view(later + 60_000).await.unwrap().ledger,
        totals
    );
    let minutes = store.minutes(&Scope::Global, 0).await.unwrap();
    assert_eq!(
        minutes
            .iter()
            .map(|m| (m.minute_ms, m.granted))
            .collect::<Vec<_>>(),
        vec![(later, (new_n + open_n) as u32)]
    );
    // Nothing is left to prune; the open lease is still reported on.
    assert_eq!(
        store
            .prune_history(later + 1, later - 8 * DAY, 1_000)
            .await
            .unwrap(),
        0
    );
    let report = outcomes(&open.recipients, sent(), later);
    store
        .report(&open.lease_id, &report, true, report_rules(later))
        .await
        .unwrap();
    let minutes = store.minutes(&Scope::Global, 0).await.unwrap();
    assert_eq!(u64::from(minutes[0].used), new_n + open_n);
}
