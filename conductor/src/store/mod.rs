//! The Store: campaigns, batches, per-recipient state, leases and the minute ledger. It is the truth;
//! channels and notifications only say "look again".

mod placeholders;
mod sql;
mod tally;

use async_trait::async_trait;
use renderer::{RenderInput, RenderJob};
use sender::{LeaseReply, Millis, RecipientOutcome};
use serde::{Deserialize, Serialize};

pub use sql::SqlStore;

use crate::domain::recipient::RecipientState;
use crate::domain::scope::Scope;
use crate::domain::validate::ValidCampaign;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no campaign {0}")]
    NotFound(String),
    #[error("campaign {0} has no recipient {1} (or its data is no longer kept)")]
    NoRecipient(String, i64),
    #[error("{0}")]
    Conflict(String),
    #[error("lease {0} is not held")]
    LeaseLost(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its list is arriving; it sends nothing until the whole list validated.
    Importing,
    /// Created without a list (or with one that replaces it): sends nothing until started.
    Draft,
    Running,
    Paused,
    Cancelled,
    Completed,
    /// Its import failed or was cut off: never shown, its rows being removed.
    #[schemars(skip)]
    Discarded,
}

impl Status {
    const ALL: [Status; 7] = [
        Status::Importing,
        Status::Draft,
        Status::Running,
        Status::Paused,
        Status::Cancelled,
        Status::Completed,
        Status::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Importing => "importing",
            Status::Draft => "draft",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Cancelled => "cancelled",
            Status::Completed => "completed",
            Status::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt(format!("campaign status {s:?}")))
    }
}

/// A campaign's own fields, checked: what is stored before its recipients.
#[derive(Debug, Clone, Copy)]
pub struct CampaignHead<'a> {
    pub name: &'a str,
    pub from: &'a renderer::Mailbox,
    pub reply_to: Option<&'a renderer::Mailbox>,
    pub template: &'a renderer::TemplateSource,
    pub template_name: Option<&'a str>,
    pub limits: &'a crate::domain::validate::Limits,
    pub track: renderer::Track,
}

impl<'a> From<&'a crate::domain::validate::Prepared> for CampaignHead<'a> {
    fn from(p: &'a crate::domain::validate::Prepared) -> Self {
        Self {
            name: &p.name,
            from: &p.from,
            reply_to: p.reply_to.as_ref(),
            template: &p.template,
            template_name: p.template_name.as_deref(),
            limits: &p.limits,
            track: p.track,
        }
    }
}

impl<'a> From<&'a ValidCampaign> for CampaignHead<'a> {
    fn from(c: &'a ValidCampaign) -> Self {
        (&c.head).into()
    }
}

/// An `Idempotency-Key` and what identifies the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    /// A digest of the request's campaign fields: the same key with other fields is refused.
    pub fingerprint: String,
}

/// What a creation found.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// A new campaign, `importing` or `draft`, with no recipients yet.
    New(Campaign),
    /// The campaign an earlier request with the same `Idempotency-Key` made.
    Replay(Campaign),
}

/// How long an upload may go unheard before it counts as cut off and its campaign is discarded.
pub const IMPORT_SILENCE_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
}

/// Recipients per state. `rendered` counts messages rendered so far whatever happened to them since;
/// `pending` counts those not yet in a final state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Counts {
    pub total: i64,
    pub rendered: i64,
    pub pending: i64,
    pub in_flight: i64,
    pub sent: i64,
    pub failed: i64,
    pub deferred: i64,
    pub unknown: i64,
    pub suppressed: i64,
    pub cancelled: i64,
    /// Provider requests made for the campaign so far (deferrals make more than one per recipient).
    pub requests: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Campaign {
    pub id: String,
    pub name: String,
    pub status: Status,
    /// Why it stopped or was paused by the system (an account-level refusal, say).
    pub status_reason: Option<String>,
    pub from: String,
    pub reply_to: Option<String>,
    pub template: Option<String>,
    pub batch_size: u32,
    pub batches: u32,
    pub batches_rendered: u32,
    pub duplicates_removed: i64,
    pub created_at: String,
    pub completed_at: Option<String>,
    /// The campaign's own cap, if it has one.
    pub per_minute: Option<u32>,
    /// Its weight in the fair share of the global cap.
    pub priority: u32,
    /// Not sent before this.
    pub send_at: Option<String>,
    /// Only sent within this daily window.
    pub window: Option<crate::domain::schedule::SendWindow>,
    pub counts: Counts,
    /// What it tracks.
    #[serde(default)]
    pub track: crate::domain::engagement::TrackRequest,
    /// Its opens and clicks so far, when it tracks either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engagement: Option<crate::domain::engagement::Engagement>,
}

/// One recipient as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct RecipientRow {
    pub id: i64,
    pub email: String,
    pub name: Option<String>,
    pub state: RecipientState,
    pub reason: Option<String>,
    pub attempts: i64,
    pub provider_id: Option<String>,
    pub updated_at: String,
}

/// A running campaign as the governor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub id: String,
    pub priority: u32,
    pub per_minute: Option<u32>,
    pub send_at_ms: Option<Millis>,
    pub window: Option<crate::domain::schedule::SendWindow>,
    /// Recipients per batch: batch `n` holds ids `n × batch_size ..`.
    pub batch_size: i64,
}

impl Running {
    /// Whether it may send at `now`: past its `send_at`, inside its window.
    pub fn may_send(&self, now: Millis) -> bool {
        self.send_at_ms.is_none_or(|t| t <= now)
            && self
                .window
                .as_ref()
                .and_then(|w| w.check().ok())
                .is_none_or(|w| w.open(now))
    }
}

/// One entry of the governor's audit log: a cap that changed, or an edit that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub at: String,
    /// `global`, `domain:gmail.com`, `campaign:{id}`, `schedule`, or `config` for a refused edit.
    pub scope: String,
    /// `cap` (changed) or `rejected`.
    pub kind: String,
    pub old: Option<String>,
    pub new: Option<String>,
    /// `config file`, `PUT /v1/campaigns/{id}`, …
    pub source: String,
}

/// One scope's row of the ledger for one calendar minute. Every API that shows a minute (the
/// ledger, the governor, the event stream) shows it in this one shape: `minute` as RFC 3339, then
/// `cap`, `granted`, `used` and `sent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteStats {
    pub minute_ms: Millis,
    pub cap: u32,
    pub granted: u32,
    /// Provider requests made with this minute's tokens.
    pub used: u32,
    /// Of those, accepted by the provider.
    pub sent: u32,
}

impl Serialize for MinuteStats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut m = s.serialize_struct("Minute", 5)?;
        m.serialize_field("minute", &rfc3339(self.minute_ms))?;
        m.serialize_field("cap", &self.cap)?;
        m.serialize_field("granted", &self.granted)?;
        m.serialize_field("used", &self.used)?;
        m.serialize_field("sent", &self.sent)?;
        m.end()
    }
}

impl schemars::JsonSchema for MinuteStats {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Minute".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let count = schemars::json_schema!({"type": "integer", "format": "uint32", "minimum": 0});
        schemars::json_schema!({
            "description": "One scope's row of the ledger for one calendar minute.",
            "type": "object",
            "required": ["minute", "cap", "granted", "used", "sent"],
            "properties": {
                "minute": {"type": "string", "format": "date-time", "description": "the minute's start"},
                "cap": count,
                "granted": count,
                "used": count,
                "sent": count,
            },
        })
    }
}

impl<'de> Deserialize<'de> for MinuteStats {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Default, Deserialize)]
        #[serde(default)]
        struct Wire {
            minute: Option<String>,
            cap: u32,
            granted: u32,
            used: u32,
            sent: u32,
        }
        let w = Wire::deserialize(d)?;
        let minute_ms = match w.minute {
            Some(m) => chrono::DateTime::parse_from_rfc3339(&m)
                .map_err(serde::de::Error::custom)?
                .timestamp_millis(),
            None => 0,
        };
        Ok(Self {
            minute_ms,
            cap: w.cap,
            granted: w.granted,
            used: w.used,
            sent: w.sent,
        })
    }
}

/// What a lease request may take: the caps for a minute that has no row yet, and the timing rules.
#[derive(Debug, Clone)]
pub struct LeaseRules {
    pub want: u32,
    pub now: Millis,
    /// The global cap (configured, lowered by the warm-up and by throttling; 0 in quiet hours).
    pub cap: u32,
    /// Per-recipient-domain caps, lower-case domains.
    pub domains: Vec<(String, u32)>,
    pub margin_ms: i64,
    /// How long after its spend-by moment a lease not closed is expired: its unreported recipients
    /// become `unknown`.
    pub ttl_ms: i64,
    /// The sandbox in force now: recipients it does not allow are failed, not leased.
    pub safety: sender::safety::Safety,
}

#[derive(Debug, Clone, Copy)]
pub struct ReportRules {
    pub now: Millis,
    pub max_attempts: u32,
    /// `[campaigns] on_ambiguous = "resend"`: sends in doubt go back to the queue instead of `unknown`.
    pub resend_ambiguous: bool,
}

/// What a report did beyond settling its recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    /// The campaign, if this report paused it (an account-level refusal).
    pub paused: Option<String>,
    /// A last report that left the campaign nothing open (waiting, in flight or due again): the
    /// campaign may be completed now rather than at the next reconcile tick.
    pub drained: bool,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a campaign validated whole in memory (a small list, a test's) and starts it: the
    /// same steps as a streamed list, one chunk.
    async fn create_campaign(
        &self,
        c: &ValidCampaign,
        batch_size: u32,
        now: Millis,
    ) -> Result<Campaign, StoreError> {
        let id = match self
            .create_empty(&c.into(), batch_size, now, Status::Importing, None)
            .await?
        {
            Opened::New(c) | Opened::Replay(c) => c.id,
        };
        for chunk in c.recipients.chunks(10_000) {
            self.import_chunk(&id, chunk, now).await?;
        }
        self.finish_import(&id, now, true).await
    }

    /// A campaign with no recipients yet: `importing` (its list follows at once) or a `draft`.
    /// With a `key` used before, nothing is stored: the first request's campaign is returned, or
    /// `Conflict` when that one is still importing or had other fields.
    async fn create_empty(
        &self,
        c: &CampaignHead<'_>,
        batch_size: u32,
        now: Millis,
        status: Status,
        key: Option<&IdempotencyKey>,
    ) -> Result<Opened, StoreError>;
    /// A draft takes a new list (`PUT …/recipients`): refused while another upload of it runs;
    /// the list it had is removed first.
    async fn begin_upload(&self, id: &str, now: Millis) -> Result<(), StoreError>;
    /// Stores a chunk of validated recipients (ids in list order) of a campaign being imported, in
    /// one transaction; an address already in the campaign is dropped and counted as a duplicate.
    /// Returns how many were dropped. Also says the upload is alive.
    async fn import_chunk(
        &self,
        id: &str,
        rows: &[renderer::RecipientData],
        now: Millis,
    ) -> Result<u64, StoreError>;
    /// Says an upload is alive while no chunk is ready (a slow client).
    async fn touch_import(&self, id: &str, now: Millis) -> Result<(), StoreError>;
    /// The whole list is in: the campaign runs (`start`) or stays a draft with its list.
    async fn finish_import(
        &self,
        id: &str,
        now: Millis,
        start: bool,
    ) -> Result<Campaign, StoreError>;
    /// An import failed: a campaign being created is discarded (hidden at once, its rows removed
    /// by [`Store::purge`], its idempotency key freed); a draft keeps no part of the new list.
    async fn abandon_import(&self, id: &str, now: Millis) -> Result<(), StoreError>;
    /// Abandons imports not heard from since `before` (their uploader died, or its process).
    async fn abandon_stale_imports(
        &self,
        before: Millis,
        now: Millis,
    ) -> Result<Vec<String>, StoreError>;
    /// Removes up to about `budget` rows of discarded campaigns, a chunk per transaction, and
    /// each such campaign once it has none; forgets idempotency keys older than `keys_before`.
    async fn purge(&self, budget: u64, keys_before: Millis) -> Result<u64, StoreError>;
    /// Removes up to about `budget` rows of finished history, oldest first: leases closed before
    /// `leases_before`, and ledger minutes before `minutes_before`, whose counts are folded into
    /// their scope's totals first (so `/metrics` counters never go back).
    async fn prune_history(
        &self,
        leases_before: Millis,
        minutes_before: Millis,
        budget: u64,
    ) -> Result<u64, StoreError>;
    /// Starts a draft that has its list; a campaign started before is returned as it is.
    async fn start(&self, id: &str, now: Millis) -> Result<Campaign, StoreError>;
    /// A campaign's template as stored.
    async fn template(&self, id: &str) -> Result<renderer::TemplateSource, StoreError>;
    /// What rendering one recipient's message takes: the campaign's sender and template and that
    /// recipient's data, read by primary key; `NoRecipient` once the campaign's retention passed
    /// and its bodies were purged.
    async fn message_input(&self, id: &str, recipient: i64) -> Result<RenderInput, StoreError>;
    /// [`Self::message_input`] with no recipient: the campaign's sender and template, for a
    /// message rendered with data from elsewhere (a test send's).
    async fn message_head(&self, id: &str) -> Result<RenderInput, StoreError>;
    async fn campaigns(&self) -> Result<Vec<Campaign>, StoreError>;
    async fn campaign(&self, id: &str) -> Result<Campaign, StoreError>;
    /// Applies a user's action; `true` when the status changed.
    async fn act(
        &self,
        id: &str,
        action: Action,
        now: Millis,
    ) -> Result<(Campaign, bool), StoreError>;

    /// Batches to render next, lowest first, of each running or paused campaign: those not handed
    /// out since `stale_before` (never, or too long ago), as many as keep about `ahead` recipients
    /// per campaign rendered and not yet sent (batches waiting or being rendered count); marks them
    /// handed out at `now`. Rendering follows the send cursor instead of running ahead of it.
    async fn batches_to_render(
        &self,
        stale_before: Millis,
        now: Millis,
        ahead: u32,
        limit: u32,
    ) -> Result<Vec<RenderJob>, StoreError>;
    /// Forgets that unrendered batches were handed out (an in-process queue died with its process).
    async fn reset_dispatch(&self) -> Result<(), StoreError>;
    /// Claims an unrendered batch for one renderer for `hold_ms` and returns what it needs; `None`
    /// when the batch needs no rendering or another renderer's claim is still fresh.
    async fn claim_render(
        &self,
        job: &RenderJob,
        now: Millis,
        hold_ms: i64,
    ) -> Result<Option<RenderInput>, StoreError>;
    async fn batch_rendered(
        &self,
        job: &RenderJob,
        key: &str,
        failed: &[(i64, String)],
        now: Millis,
    ) -> Result<(), StoreError>;

    /// Claims tokens from this minute's ledger and leases that many recipients, atomically.
    async fn lease(&self, rules: LeaseRules) -> Result<LeaseReply, StoreError>;
    /// Records outcomes.
    async fn report(
        &self,
        lease_id: &str,
        outcomes: &[RecipientOutcome],
        last: bool,
        rules: ReportRules,
    ) -> Result<Reported, StoreError>;
    /// Closes leases past their expiry; returns how many recipients were in doubt (`unknown`, or
    /// queued again when `resend_ambiguous`).
    async fn expire_leases(&self, now: Millis, resend_ambiguous: bool) -> Result<u64, StoreError>;
    /// Marks up to about `budget` recipients still waiting in cancelled campaigns as cancelled, a
    /// chunk per transaction (a cancel marks the first chunks itself); returns how many.
    async fn sweep_cancelled(&self, now: Millis, budget: u64) -> Result<u64, StoreError>;
    /// Counts a campaign's recipients row by row — O(N), for checks and repair, never on a request
    /// path — and lists where the kept counters differ from the rows; empty when they agree.
    async fn recount(&self, id: &str) -> Result<Vec<String>, StoreError>;
    /// Marks running campaigns with nothing left to send as completed; returns their ids.
    async fn complete_finished(&self, now: Millis) -> Result<Vec<String>, StoreError>;
    /// Marks campaigns that have had their first lease as started; returns those newly marked.
    async fn mark_started(&self, now: Millis) -> Result<Vec<String>, StoreError>;
    /// Ended campaigns whose bodies are still kept although they ended before `ended_before`.
    async fn bodies_to_purge(&self, ended_before: Millis) -> Result<Vec<String>, StoreError>;
    async fn bodies_purged(&self, id: &str, now: Millis) -> Result<(), StoreError>;

    /// Records a provider's delivery event once (by its key); a hard bounce, complaint or
    /// unsubscribe also suppresses the address, here and in every campaign still waiting to mail it.
    /// Returns false when the event was already recorded.
    async fn record_feedback(
        &self,
        event: &crate::domain::feedback::Event,
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// Spends a single-use webhook token (a Mailgun signature's): `true` the first time `key` is
    /// seen, `false` for a replay. Tokens older than `forget_before` are forgotten (their posts are
    /// refused as stale by then anyway).
    async fn spend_token(
        &self,
        key: &str,
        now: Millis,
        forget_before: Millis,
    ) -> Result<bool, StoreError>;

    /// A page of a campaign's recipients in id order, after `after`, optionally in one state.
    async fn recipients(
        &self,
        id: &str,
        state: Option<RecipientState>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<RecipientRow>, StoreError>;
    /// Puts a campaign's recipients in `states` (those of [`RecipientState::RETRYABLE`]) back in the queue and the
    /// campaign back to running, a chunk per transaction; returns how many.
    async fn retry(
        &self,
        id: &str,
        states: &[RecipientState],
        now: Millis,
    ) -> Result<u64, StoreError>;

    /// Lowers this minute's global cap (throttling), never below what it has already granted.
    async fn lower_cap(&self, minute: Millis, cap: u32) -> Result<(), StoreError>;

    /// Takes `n` of this minute's tokens at once for a test send, from the `global` row and the
    /// `test` row (both created with `cap` if the minute has none yet): all `n`, or none when the
    /// minute has fewer left before its deadline (`now` past `minute_end - margin_ms`). Returns the
    /// minute they belong to.
    async fn take_test_tokens(
        &self,
        n: u32,
        cap: u32,
        now: Millis,
        margin_ms: i64,
    ) -> Result<Option<Millis>, StoreError>;
    /// What a test send's tokens came to: `attempted` requests, `sent` accepted, on both rows.
    async fn settle_test_tokens(
        &self,
        minute: Millis,
        attempted: u32,
        sent: u32,
    ) -> Result<(), StoreError>;
    /// Records one open or click of a recipient's message (and, for a click, of its link): the
    /// recipient's first and last, its people's and machines' counts, and the campaign's and the
    /// link's figures, in one transaction. `false` when the recipient is not (or no longer) stored.
    async fn record_engagement(
        &self,
        event: &crate::domain::engagement::Event,
    ) -> Result<bool, StoreError>;
    /// A campaign's most clicked links, at most `limit`.
    async fn links(
        &self,
        id: &str,
        limit: u32,
    ) -> Result<Vec<crate::domain::engagement::LinkClicks>, StoreError>;
    /// Which of `emails` (in [`sender::safety::canonical`] form) are suppressed, and why.
    async fn suppressed(&self, emails: &[String]) -> Result<Vec<(String, String)>, StoreError>;

    /// The ledger of one scope (`global`, `domain:…`, `campaign:…`), minute by minute from `since`.
    async fn minutes(&self, scope: &Scope, since: Millis) -> Result<Vec<MinuteStats>, StoreError>;
    /// Every scope's row for one minute.
    async fn minute_rows(&self, minute: Millis) -> Result<Vec<(Scope, MinuteStats)>, StoreError>;

    /// Changes a campaign's own cap (`Some(None)` removes it) and priority; applies from the next
    /// minute (this minute's row keeps its cap), and is written to the audit log.
    async fn set_limits(
        &self,
        id: &str,
        per_minute: Option<Option<u32>>,
        priority: Option<u32>,
        now: Millis,
    ) -> Result<Campaign, StoreError>;
    /// What `/metrics` reads from the store: ledger totals per scope (forfeits counted for minutes
    /// before `current_minute`), recipients of running campaigns by state, campaigns by status.
    async fn metrics_view(&self, current_minute: Millis) -> Result<StoreView, StoreError>;
    /// Running campaigns, oldest first.
    async fn running(&self) -> Result<Vec<Running>, StoreError>;
    /// How many of a campaign's recipients still to be sent are in each of `domains`.
    async fn open_by_domain(&self, id: &str, domains: &[String]) -> Result<Vec<i64>, StoreError>;
    async fn record_audit(&self, entries: &[AuditEntry], now: Millis) -> Result<(), StoreError>;
    /// The newest `limit` audit entries, newest first.
    async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
}

/// What the store adds at scrape time.
#[derive(Debug, Clone, Default)]
pub struct StoreView {
    /// scope → (tokens granted, tokens forfeited: granted but not used in minutes that ended).
    pub ledger: Vec<(String, u64, u64)>,
    /// Recipients of running campaigns by state.
    pub queue: Vec<(String, u64)>,
    pub campaigns: Vec<(String, u64)>,
    /// The figures of campaigns that track, while they are running or paused and for a week
    /// after they ended.
    pub engagement: Vec<(String, crate::domain::engagement::Engagement)>,
}

pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
