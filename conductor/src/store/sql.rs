//! The store on SQL: SQLite (the embedded default, one file in WAL mode) or PostgreSQL (production,
//! shared by several conductors). One implementation: every statement is written once, in SQL both
//! accept, and the backends differ only in how rows are locked and how connections are pooled.
//!
//! SQLite: all writes go through one connection, so every write transaction — a ledger claim with its
//! lease above all — is serialised; reads use their own pool and never wait for a write.
//! PostgreSQL: the minute's ledger row is locked (`FOR UPDATE`) for the claim and recipients are taken
//! with `FOR UPDATE … SKIP LOCKED`, so conductors sharing a database never grant past the cap nor
//! lease a recipient twice.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use renderer::{Mailbox, RecipientData, RenderInput, RenderJob, TemplateSource};
use sender::{LeaseReply, Millis, RecipientOutcome, SendLease};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use super::placeholders::{placeholders, values};
use super::tally::{domain_of, Tally};
use super::{
    rfc3339, Action, AuditEntry, Campaign, CampaignHead, Counts, IdempotencyKey, LeaseRules,
    MinuteStats, Opened, RecipientRow, ReportRules, Reported, Running, Status, Store, StoreError,
};
use crate::domain::engagement::{self, Engagement, Figures};
use crate::domain::fair::Fair;
use crate::domain::feedback;
use crate::domain::ledger::{self, MinuteRow};
use crate::domain::planner;
use crate::domain::recipient::{self, Effect, RecipientState, SettleRules};
use crate::domain::scope::Scope;

/// Recipients one lease could take (all of one batch), and the capped domain they are all in (if any).
struct Pick {
    batch: i64,
    rows: Vec<Candidate>,
    domain: Option<(String, u32)>,
}

struct Candidate {
    id: i64,
    email: String,
    key: String,
    state: RecipientState,
}

/// Rows moved per statement by the chunked sweeps (cancel, retry): each its own short transaction,
/// so SQLite's one writer is never held for long.
const SWEEP_CHUNK: i64 = 5_000;

/// The next [`SWEEP_CHUNK`] (`$4`) of campaign `$2`'s recipients in state `$3`, found through the
/// state index and updated by primary key. `state || ''` keeps SQLite's planner from walking every
/// row of the state in the outer loop; the repeated test guards against a concurrent change.
const CHUNK_OF_STATE: &str = "campaign_id = $2 AND id IN \
     (SELECT id FROM recipients WHERE campaign_id = $2 AND state = $3 LIMIT $4) AND (state || '') = $3";

/// Times a batch is rendered again because its senders could not read it.
const MAX_RERENDERS: i64 = 3;
/// An import at least this large has the planner's statistics refreshed (PostgreSQL).
const ANALYZE_AFTER_IMPORT: i64 = 10_000;

const RUNNING: &str =
    "SELECT id, priority, per_minute, send_at_ms, window_json, batch_size FROM campaigns \
     WHERE status = 'running' ORDER BY created_ms, id";

fn running_row(row: &AnyRow) -> Result<Running, StoreError> {
    Ok(Running {
        id: row.get("id"),
        priority: row.get::<i64, _>("priority").clamp(1, 1_000) as u32,
        per_minute: row
            .get::<Option<i64>, _>("per_minute")
            .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
        send_at_ms: row.get("send_at_ms"),
        batch_size: row.get::<i64, _>("batch_size").max(1),
        window: row
            .get::<Option<String>, _>("window_json")
            .map(|w| json(&w))
            .transpose()?,
    })
}
/// States from which a recipient may still be sent, as SQL.
const OPEN_STATES: &str = "('pending', 'rendered', 'leased', 'deferred')";

/// `RETURNING` of a statement that moves recipients, for [`Tally::moved_rows`].
const MOVED: &str = " RETURNING batch, email_key";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Row lock for a read that a write in the same transaction depends on. SQLite needs none: its
    /// one writer connection serialises every write transaction.
    fn for_update(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// Inserts recipients from a JSON array (`$3`) of `{id, batch, email, key, name, data}` for
    /// campaign `$1` at time `$2`; an address already in the campaign is skipped (a duplicate).
    /// Returns each inserted row's batch and key. On PostgreSQL the data goes in with them, the
    /// array parsed once; SQLite has no `INSERT` in a `WITH`, and runs [`Self::insert_data`] next.
    fn insert_recipients(self) -> &'static str {
        match self {
            Backend::Sqlite => {
                "INSERT INTO recipients (campaign_id, id, batch, email, email_key, name, state, updated_ms) \
                 SELECT $1, json_extract(r.value, '$.id'), json_extract(r.value, '$.batch'), \
                 json_extract(r.value, '$.email'), json_extract(r.value, '$.key'), json_extract(r.value, '$.name'), \
                 'pending', $2 FROM json_each($3) AS r WHERE true \
                 ON CONFLICT (email_key, campaign_id) DO NOTHING RETURNING batch, email_key"
            }
            Backend::Postgres => {
                "WITH src AS MATERIALIZED (SELECT (r->>'id')::bigint AS id, (r->>'batch')::bigint AS batch, \
                 r->>'email' AS email, r->>'key' AS email_key, r->>'name' AS name, r->>'data' AS data \
                 FROM jsonb_array_elements($3::jsonb) AS r), \
                 ins AS (INSERT INTO recipients (campaign_id, id, batch, email, email_key, name, state, updated_ms) \
                 SELECT $1, id, batch, email, email_key, name, 'pending', $2 FROM src \
                 ON CONFLICT (email_key, campaign_id) DO NOTHING RETURNING id, batch, email_key), \
                 kept AS (INSERT INTO recipient_data (campaign_id, id, data) \
                 SELECT $1, src.id, src.data FROM src JOIN ins ON ins.id = src.id \
                 ON CONFLICT (campaign_id, id) DO NOTHING) \
                 SELECT batch, email_key FROM ins"
            }
        }
    }

    /// SQLite's second half of [`Self::insert_recipients`]: the data of the rows it inserted (a
    /// duplicate's id has no recipient row), from the same array.
    fn insert_data(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => Some(
                "INSERT INTO recipient_data (campaign_id, id, data) \
                 SELECT $1, json_extract(r.value, '$.id'), json_extract(r.value, '$.data') \
                 FROM json_each($2) AS r WHERE EXISTS (SELECT 1 FROM recipients x \
                 WHERE x.campaign_id = $1 AND x.id = json_extract(r.value, '$.id')) \
                 ON CONFLICT (campaign_id, id) DO NOTHING",
            ),
            Backend::Postgres => None,
        }
    }

    /// Settles a lease's recipients in one statement: `$2` is a JSON array of `{id, to, reason,
    /// provider_id, retry_at, attempted}`; only rows the lease `$4` still holds move. On SQLite the
    /// outcomes are materialised first: left to itself its planner walks every leased row of the
    /// campaign and parses the JSON again for each (quadratic in what is in flight). The lease and
    /// state tests are kept off the indexes (`+`): given `recipients_by_lease`, the planner walked
    /// the lease's rows and scanned the outcomes for each (quadratic in the lease's size; a final
    /// report of 200 took 4.7 ms of the writer, 3.4 ms by primary key). Its `RETURNING` takes the
    /// target's columns unqualified.
    fn settle_leased(self) -> &'static str {
        match self {
            Backend::Sqlite => {
                "WITH v AS MATERIALIZED (SELECT json_extract(e.value, '$.id') AS id, \
                 json_extract(e.value, '$.to') AS state, json_extract(e.value, '$.reason') AS reason, \
                 json_extract(e.value, '$.provider_id') AS provider_id, \
                 json_extract(e.value, '$.retry_at') AS retry_at, \
                 json_extract(e.value, '$.attempted') AS attempted FROM json_each($2) AS e) \
                 UPDATE recipients AS r SET state = v.state, reason = v.reason, \
                 provider_id = coalesce(v.provider_id, r.provider_id), retry_at_ms = v.retry_at, \
                 attempts = r.attempts + v.attempted, lease_id = NULL, updated_ms = $1 \
                 FROM v WHERE r.campaign_id = $3 AND r.id = v.id AND +r.lease_id = $4 AND +r.state = 'leased' \
                 RETURNING id, batch, email_key"
            }
            Backend::Postgres => {
                "UPDATE recipients AS r SET state = v.state, reason = v.reason, \
                 provider_id = coalesce(v.provider_id, r.provider_id), retry_at_ms = v.retry_at, \
                 attempts = r.attempts + v.attempted, lease_id = NULL, updated_ms = $1 \
                 FROM (SELECT (e->>'id')::bigint AS id, e->>'to' AS state, e->>'reason' AS reason, \
                 e->>'provider_id' AS provider_id, (e->>'retry_at')::bigint AS retry_at, \
                 (e->>'attempted')::bigint AS attempted FROM jsonb_array_elements($2::jsonb) AS e) AS v \
                 WHERE r.campaign_id = $3 AND r.id = v.id AND r.lease_id = $4 AND r.state = 'leased' \
                 RETURNING r.id, r.batch, r.email_key"
            }
        }
    }

    /// `id` between two parameters, to bound a lookup by a list of ids to their range. PostgreSQL's
    /// planner, misled by statistics older than the campaign, may otherwise scan the whole campaign
    /// and filter by the list; SQLite seeks each id in the primary key, which beats a range scan
    /// there, so its terms are kept off the index.
    fn id_within(self, lo: usize) -> String {
        let id = match self {
            Backend::Sqlite => "+id",
            Backend::Postgres => "id",
        };
        format!("{id} >= ${lo} AND {id} <= ${}", lo + 1)
    }

    /// Lock the rows taken from `table`, skipping rows another conductor holds.
    fn skip_locked(self, table: &str) -> String {
        match self {
            Backend::Sqlite => String::new(),
            Backend::Postgres => format!(" FOR UPDATE OF {table} SKIP LOCKED"),
        }
    }
}

pub struct SqlStore {
    backend: Backend,
    write: AnyPool,
    read: AnyPool,
    /// Whose turn the next lease is (weighted round-robin over running campaigns).
    fair: Mutex<Fair>,
}

impl SqlStore {
    /// Opens `sqlite://PATH` (created if missing) or `postgres://…`, and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = Path::new(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Corrupt(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            let url = format!("sqlite://{}?mode=rwc", path.display());
            let write = AnyPoolOptions::new()
                .max_connections(1)
                .after_connect(sqlite_pragmas)
                .connect(&url)
                .await?;
            sqlx::migrate!("./migrations/sqlite").run(&write).await?;
            let read = AnyPoolOptions::new()
                .max_connections(4)
                .after_connect(sqlite_pragmas)
                .connect(&url)
                .await?;
            Ok(Self::new(Backend::Sqlite, write, read))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            Ok(Self::new(Backend::Postgres, pool.clone(), pool))
        } else {
            Err(StoreError::Corrupt(format!(
                "unsupported store URL {url:?}"
            )))
        }
    }

    fn new(backend: Backend, write: AnyPool, read: AnyPool) -> Self {
        Self {
            backend,
            write,
            read,
            fair: Mutex::new(Fair::default()),
        }
    }

    /// The kept counters of the campaigns `ids`, by campaign.
    async fn counts(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, Counts>, StoreError> {
        let mut out: std::collections::HashMap<String, Counts> = ids
            .iter()
            .map(|id| (id.clone(), Counts::default()))
            .collect();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT campaign_id, state, n FROM recipient_counts WHERE campaign_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.read).await? {
                let state: String = row.get("state");
                let state = RecipientState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("recipient state {state:?}")))?;
                let c = out.entry(row.get("campaign_id")).or_default();
                add_count(c, state, row.get("n"));
            }
        }
        Ok(out)
    }

    async fn load(&self, row: AnyRow) -> Result<Campaign, StoreError> {
        let id: String = row.get("id");
        let counts = self.counts(std::slice::from_ref(&id)).await?.remove(&id);
        Self::campaign_of(row, counts.unwrap_or_default())
    }

    fn campaign_of(row: AnyRow, mut counts: Counts) -> Result<Campaign, StoreError> {
        let id: String = row.get("id");
        counts.requests = row.get("requests");
        counts.rendered = row.get("rendered_total");
        let from: Mailbox = json(row.get("from_json"))?;
        let reply_to: Option<Mailbox> = row
            .get::<Option<String>, _>("reply_to_json")
            .map(|j| json(&j))
            .transpose()?;
        let track = track_of(&row);
        Ok(Campaign {
            id,
            name: row.get("name"),
            status: Status::parse(row.get("status"))?,
            status_reason: row.get("status_reason"),
            from: from.to_string(),
            reply_to: reply_to.map(|r| r.to_string()),
            template: row.get("template_name"),
            batch_size: row.get::<i64, _>("batch_size") as u32,
            batches: row.get::<i64, _>("batches_total") as u32,
            batches_rendered: row.get::<i64, _>("batches_rendered") as u32,
            duplicates_removed: row.get("duplicates"),
            created_at: rfc3339(row.get("created_ms")),
            completed_at: row.get::<Option<i64>, _>("completed_ms").map(rfc3339),
            per_minute: row
                .get::<Option<i64>, _>("per_minute")
                .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
            priority: row.get::<i64, _>("priority").clamp(1, 1_000) as u32,
            send_at: row.get::<Option<i64>, _>("send_at_ms").map(rfc3339),
            window: row
                .get::<Option<String>, _>("window_json")
                .map(|w| json(&w))
                .transpose()?,
            counts,
            track: track.into(),
            engagement: track.any().then(|| engagement_of(&row)),
        })
    }

    /// Up to `want` sendable recipients of one batch of a campaign, none of which another conductor
    /// holds right now (on PostgreSQL they are locked until the transaction ends), all in one domain
    /// group — one capped domain, or every domain without a cap — so a lease draws on one domain scope
    /// at most. Recipients of domains whose cap is spent this minute (`full`) are passed over, so one
    /// throttled domain does not stall the others.
    ///
    /// The batch is the one of the deferred recipient that came due first, else the lowest batch with
    /// rendered recipients waiting (`batches.ready`); both are read from the low end of an index, and
    /// the recipients by id within the batch's range, so the cost does not grow with the campaign.
    async fn sendable(
        &self,
        tx: &mut Transaction<'_, Any>,
        c: &Running,
        r: &LeaseRules,
        full: &[String],
    ) -> Result<Option<Pick>, StoreError> {
        let in_full = |email: &str| {
            let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            full.iter().any(|d| d.eq_ignore_ascii_case(domain))
        };
        let skip: String = (0..full.len())
            .map(|k| format!(" AND lower(email) NOT LIKE ${}", 6 + k))
            .collect();
        let patterns: Vec<String> = full.iter().map(|d| format!("%@{d}")).collect();
        // Deferred recipients that came due have waited longest. A few dozen are looked at, past
        // those of spent domains: enough to find another domain's, never a scan of the queue.
        let due: Option<i64> = sqlx::query(
            "SELECT batch, email FROM recipients WHERE campaign_id = $1 AND state = 'deferred'              AND retry_at_ms <= $2 ORDER BY retry_at_ms LIMIT 64",
        )
        .bind(&c.id)
        .bind(r.now)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .find(|row| !in_full(row.get::<&str, _>("email")))
        .map(|row| row.get("batch"));
        // A handful of batches is plenty: rows are locked only for the instant a lease is granted.
        let ready: Vec<i64> = sqlx::query_scalar(
            "SELECT n FROM batches WHERE campaign_id = $1 AND ready > 0 ORDER BY n LIMIT 8",
        )
        .bind(&c.id)
        .fetch_all(&mut **tx)
        .await?;
        let mut tried = Vec::with_capacity(9);
        for batch in due.into_iter().chain(ready) {
            if tried.contains(&batch) {
                continue;
            }
            tried.push(batch);
            let ids = planner::ids_of(batch as u32, c.batch_size as u32);
            let sql = format!(
                "SELECT id, email, email_key, state FROM recipients WHERE campaign_id = $1 \
                 AND id >= $2 AND id < $3 AND batch = $4 \
                 AND (state = 'rendered' OR (state = 'deferred' AND retry_at_ms <= $5)){skip} \
                 ORDER BY id LIMIT ${}{}",
                6 + patterns.len(),
                self.backend.skip_locked("recipients")
            );
            // Rows of spent domains are passed over within the batch's range: at most a batch's worth.
            let mut q = sqlx::query(&sql)
                .bind(&c.id)
                .bind(ids.start)
                .bind(ids.end)
                .bind(batch)
                .bind(r.now);
            for p in &patterns {
                q = q.bind(p);
            }
            let rows = q.bind(i64::from(r.want)).fetch_all(&mut **tx).await?;
            let group_of = |email: &str| {
                let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
                r.domains
                    .iter()
                    .find(|(d, _)| d.eq_ignore_ascii_case(domain))
                    .cloned()
            };
            let mut domain = None;
            let mut picked = Vec::with_capacity((r.want as usize).min(rows.len()));
            for row in rows {
                let email: String = row.get("email");
                let group = group_of(&email);
                if picked.is_empty() {
                    domain = group;
                } else if group != domain {
                    continue;
                }
                let state: String = row.get("state");
                picked.push(Candidate {
                    id: row.get("id"),
                    key: row
                        .get::<Option<String>, _>("email_key")
                        .unwrap_or_else(|| sender::safety::canonical(&email)),
                    email,
                    state: RecipientState::parse(&state)
                        .ok_or_else(|| StoreError::Corrupt(format!("recipient state {state:?}")))?,
                });
            }
            if !picked.is_empty() {
                return Ok(Some(Pick {
                    batch,
                    rows: picked,
                    domain,
                }));
            }
        }
        Ok(None)
    }

    /// A lease's batch could not be read by its sender. Bodies are derived from what the store holds,
    /// so the batch is rendered again: its waiting recipients go back to `pending` and the batch is
    /// handed out for rendering. After [`MAX_RERENDERS`] such reports the recipients fail with the
    /// reason instead, so a body that can never be read cannot cost tokens forever.
    async fn render_again(
        tx: &mut Transaction<'_, Any>,
        tally: &mut Tally,
        cid: &str,
        lease_id: &str,
        reason: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let batch: i64 = sqlx::query_scalar("SELECT batch FROM leases WHERE id = $1")
            .bind(lease_id)
            .fetch_one(&mut **tx)
            .await?;
        let rerenders: i64 = sqlx::query_scalar(
            "UPDATE batches SET rerenders = rerenders + 1 WHERE campaign_id = $1 AND n = $2 RETURNING rerenders",
        )
        .bind(cid)
        .bind(batch)
        .fetch_one(&mut **tx)
        .await?;
        let give_up = rerenders > MAX_RERENDERS;
        let (to, why) = if give_up {
            tracing::warn!(campaign = cid, batch, %reason, "rendered batch still unreadable: its recipients fail");
            (
                RecipientState::Failed,
                format!("the rendered message could not be read after {MAX_RERENDERS} renders: {reason}"),
            )
        } else {
            tracing::warn!(campaign = cid, batch, %reason, "rendered batch unreadable: rendering it again");
            (
                RecipientState::Pending,
                format!("rendering again: {reason}"),
            )
        };
        // Another sender's lease of the same batch is left alone: its report is still to come.
        for from in [
            RecipientState::Rendered,
            RecipientState::Deferred,
            RecipientState::Leased,
        ] {
            let leased = from == RecipientState::Leased;
            let sql = format!(
                "UPDATE recipients SET state = $1, reason = $2, lease_id = NULL, updated_ms = $3 \
                 WHERE campaign_id = $4 AND batch = $5 AND state = $6{}{MOVED}",
                if leased { " AND lease_id = $7" } else { "" }
            );
            let mut q = sqlx::query(&sql)
                .bind(to.as_str())
                .bind(&why)
                .bind(now)
                .bind(cid)
                .bind(batch)
                .bind(from.as_str());
            if leased {
                q = q.bind(lease_id);
            }
            let rows = q.fetch_all(&mut **tx).await?;
            tally.moved_rows(cid, &rows, from, to);
        }
        if give_up {
            return Ok(());
        }
        let size: Option<i64> = sqlx::query_scalar(
            "UPDATE batches SET rendered_ms = NULL, body_key = NULL, dispatched_ms = NULL, render_claim_ms = NULL \
             WHERE campaign_id = $1 AND n = $2 AND rendered_ms IS NOT NULL RETURNING size",
        )
        .bind(cid)
        .bind(batch)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(size) = size {
            tally.batch_rendered(cid, size, -1);
        }
        Ok(())
    }

    /// [`Self::sendable`], less whoever may not be mailed now: an address on the suppression list
    /// (marked `suppressed`) or, in sandbox mode, outside what `[safety]` allows (marked `failed`).
    /// Every send of every path (first send, a deferral come due, a retry on request) is leased
    /// here, so this is the one place the rule is applied. Costs one indexed lookup per lease.
    async fn mailable(
        &self,
        tx: &mut Transaction<'_, Any>,
        tally: &mut Tally,
        c: &Running,
        r: &LeaseRules,
        full: &[String],
    ) -> Result<Option<Pick>, StoreError> {
        // A pick wholly refused is looked past, a few times; the rest wait for the next lease.
        for _ in 0..4 {
            let Some(mut pick) = self.sendable(tx, c, r, full).await? else {
                return Ok(None);
            };
            let sql = format!(
                "SELECT email, reason FROM suppressions WHERE email IN ({})",
                placeholders(1, pick.rows.len())
            );
            let mut q = sqlx::query(&sql);
            for row in &pick.rows {
                q = q.bind(&row.key);
            }
            let suppressed: std::collections::HashMap<String, String> = q
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(|row| (row.get("email"), row.get("reason")))
                .collect();
            let mut refused = 0;
            let mut kept = Vec::with_capacity(pick.rows.len());
            for row in pick.rows {
                let (to, reason) = if let Some(why) = suppressed.get(&row.key) {
                    (RecipientState::Suppressed, format!("suppressed: {why}"))
                } else if !r.safety.allows(&row.email) {
                    (RecipientState::Failed, sender::safety::refusal(&row.email))
                } else {
                    kept.push(row);
                    continue;
                };
                sqlx::query(
                    "UPDATE recipients SET state = $1, reason = $2, lease_id = NULL, updated_ms = $3 \
                     WHERE campaign_id = $4 AND id = $5",
                )
                .bind(to.as_str())
                .bind(reason)
                .bind(r.now)
                .bind(&c.id)
                .bind(row.id)
                .execute(&mut **tx)
                .await?;
                tally.moved(&c.id, pick.batch, &row.key, row.state, to);
                refused += 1;
            }
            if refused > 0 {
                tracing::info!(
                    campaign = c.id,
                    refused,
                    "recipients not mailed: suppressed or outside the sandbox"
                );
            }
            pick.rows = kept;
            if !pick.rows.is_empty() {
                return Ok(Some(pick));
            }
        }
        Ok(None)
    }

    /// Locks (creating them with `cap` if this minute has none yet) the ledger rows of `scopes`, in
    /// name order so that conductors claiming several at once cannot deadlock.
    async fn ledger_rows(
        &self,
        tx: &mut Transaction<'_, Any>,
        scopes: &mut [(Scope, u32)],
        minute: Millis,
    ) -> Result<Vec<MinuteRow>, StoreError> {
        scopes.sort_by_cached_key(|(scope, _)| scope.to_string());
        let mut rows = Vec::with_capacity(scopes.len());
        for (scope, cap) in scopes.iter() {
            let scope = scope.to_string();
            sqlx::query(
                "INSERT INTO minute_ledger (scope, minute_ms, cap, granted, next_slot_ms) VALUES ($1, $2, $3, 0, $2) \
                 ON CONFLICT (scope, minute_ms) DO NOTHING",
            )
            .bind(&scope)
            .bind(minute)
            .bind(i64::from(*cap))
            .execute(&mut **tx)
            .await?;
            let row = sqlx::query(&format!(
                "SELECT minute_ms, cap, granted, next_slot_ms FROM minute_ledger WHERE scope = $1 AND minute_ms = $2{}",
                self.backend.for_update()
            ))
            .bind(&scope)
            .bind(minute)
            .fetch_one(&mut **tx)
            .await?;
            rows.push(MinuteRow {
                minute: row.get("minute_ms"),
                cap: row.get::<i64, _>("cap") as u32,
                granted: row.get::<i64, _>("granted") as u32,
                next_slot: row.get("next_slot_ms"),
            });
        }
        Ok(rows)
    }

    /// A campaign's sender, template and tracking, no recipient yet.
    async fn head(&self, id: &str) -> Result<Head, StoreError> {
        let c = sqlx::query(
            "SELECT from_json, reply_to_json, template_json, bodies_purged_ms, batch_size, \
             track_opens, track_clicks FROM campaigns WHERE id = $1 AND status <> 'discarded'",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let input = RenderInput {
            from: json(c.get("from_json"))?,
            reply_to: c
                .get::<Option<String>, _>("reply_to_json")
                .map(|j| json(&j))
                .transpose()?,
            template: json(c.get("template_json"))?,
            recipients: Vec::new(),
            limits: Default::default(),
            track: track_of(&c),
        };
        Ok(Head {
            input,
            purged: c.get::<Option<i64>, _>("bodies_purged_ms").is_some(),
            batch_size: c.get::<i64, _>("batch_size") as u32,
        })
    }

    /// Whether a campaign was cancelled: what was not sent then goes nowhere.
    async fn cancelled(
        tx: &mut Transaction<'_, Any>,
        campaign_id: &str,
    ) -> Result<bool, StoreError> {
        let status: String = sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1")
            .bind(campaign_id)
            .fetch_one(&mut **tx)
            .await?;
        Ok(status == Status::Cancelled.as_str())
    }
}

/// Recipients a cancel marks before it answers; a larger campaign's rest follows within seconds.
const CANCEL_NOW: u64 = 50_000;

impl SqlStore {
    /// Marks up to about `budget` of a cancelled campaign's waiting recipients cancelled, a chunk per
    /// transaction; returns how many. In-flight recipients finish their send and their reports
    /// land them in a final state.
    async fn sweep_cancelled_one(
        &self,
        cid: &str,
        now: Millis,
        budget: u64,
    ) -> Result<u64, StoreError> {
        let mut moved = 0;
        for from in [
            RecipientState::Pending,
            RecipientState::Rendered,
            RecipientState::Deferred,
        ] {
            while moved < budget {
                let mut tx = self.write.begin().await?;
                let rows = sqlx::query(&format!(
                    "UPDATE recipients SET state = 'cancelled', updated_ms = $1 \
                     WHERE {CHUNK_OF_STATE}{MOVED}"
                ))
                .bind(now)
                .bind(cid)
                .bind(from.as_str())
                .bind(SWEEP_CHUNK)
                .fetch_all(&mut *tx)
                .await?;
                let mut tally = Tally::default();
                tally.moved_rows(cid, &rows, from, RecipientState::Cancelled);
                tally.apply(&mut tx).await?;
                tx.commit().await?;
                moved += rows.len() as u64;
                if (rows.len() as i64) < SWEEP_CHUNK {
                    break;
                }
            }
        }
        Ok(moved)
    }

    /// Removes up to about `budget` of a campaign's recipients, a chunk per transaction; returns how
    /// many, and whether none are left — then its batches and counters are reset as well.
    async fn clear_rows(&self, id: &str, budget: u64) -> Result<(u64, bool), StoreError> {
        let mut removed = 0;
        loop {
            if removed >= budget {
                return Ok((removed, false));
            }
            let mut tx = self.write.begin().await?;
            let n = sqlx::query(
                "DELETE FROM recipients WHERE campaign_id = $1 AND id IN \
                 (SELECT id FROM recipients WHERE campaign_id = $1 ORDER BY id LIMIT $2)",
            )
            .bind(id)
            .bind(SWEEP_CHUNK)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // The same chunk's data: both tables are in id order, and a recipient's data row is
            // written with it.
            sqlx::query(
                "DELETE FROM recipient_data WHERE campaign_id = $1 AND id IN \
                 (SELECT id FROM recipient_data WHERE campaign_id = $1 ORDER BY id LIMIT $2)",
            )
            .bind(id)
            .bind(if (n as i64) < SWEEP_CHUNK {
                i64::MAX
            } else {
                n as i64
            })
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            removed += n;
            if (n as i64) < SWEEP_CHUNK {
                break;
            }
        }
        let mut tx = self.write.begin().await?;
        for table in ["batches", "recipient_counts", "domain_counts"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE campaign_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "UPDATE campaigns SET total = 0, duplicates = 0, batches_total = 0, batches_rendered = 0, \
             rendered_total = 0 WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((removed, true))
    }

    async fn insert_audit(
        tx: &mut Transaction<'_, Any>,
        entries: &[AuditEntry],
        now: Millis,
    ) -> Result<(), StoreError> {
        for e in entries {
            sqlx::query(
                "INSERT INTO governor_audit (at_ms, scope, kind, old, new, source) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(now)
            .bind(&e.scope)
            .bind(&e.kind)
            .bind(&e.old)
            .bind(&e.new)
            .bind(&e.source)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// Set on every SQLite connection: WAL so readers never wait for the writer, and a generous busy
/// timeout instead of an error when the file is briefly locked.
fn sqlite_pragmas(
    conn: &mut sqlx::AnyConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        conn.execute(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON",
        )
        .await
        .map(|_| ())
    })
}

/// Adds `n` recipients in `state` to a campaign's counts.
fn add_count(c: &mut Counts, state: RecipientState, n: i64) {
    use RecipientState::*;
    c.total += n;
    if state.is_open() {
        c.pending += n;
    }
    match state {
        Pending | Rendered => {}
        Leased => c.in_flight += n,
        Deferred => c.deferred += n,
        Sent => c.sent += n,
        Failed => c.failed += n,
        Unknown => c.unknown += n,
        Suppressed => c.suppressed += n,
        Cancelled => c.cancelled += n,
    }
}

/// A campaign as a render needs it, before its recipients.
struct Head {
    input: RenderInput,
    /// Its bodies were purged: its retention has passed.
    purged: bool,
    batch_size: u32,
}

fn track_of(c: &AnyRow) -> renderer::Track {
    renderer::Track {
        opens: c.get::<i64, _>("track_opens") != 0,
        clicks: c.get::<i64, _>("track_clicks") != 0,
    }
}

fn engagement_of(c: &AnyRow) -> Engagement {
    let figures = |kind: &str| Figures {
        unique: c.get(format!("{kind}_unique").as_str()),
        total: c.get(format!("{kind}_human").as_str()),
        machine: c.get(format!("{kind}_machine").as_str()),
    };
    Engagement {
        opens: figures("opens"),
        clicks: figures("clicks"),
    }
}

/// A recipient as a render needs it, from a row of `id, email, name, data` (recipients joined
/// with recipient_data); the links are the conductor's to add.
fn recipient_data(r: &AnyRow) -> Result<RecipientData, StoreError> {
    Ok(RecipientData {
        id: r.get("id"),
        email: r.get("email"),
        name: r.get("name"),
        data: json(r.get("data"))?,
        unsubscribe: None,
        web_url: None,
        tracking: None,
    })
}

fn json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn minute_stats(r: &AnyRow) -> MinuteStats {
    MinuteStats {
        minute_ms: r.get("minute_ms"),
        cap: r.get::<i64, _>("cap") as u32,
        granted: r.get::<i64, _>("granted") as u32,
        used: r.get::<i64, _>("used") as u32,
        sent: r.get::<i64, _>("sent") as u32,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

#[async_trait]
impl Store for SqlStore {
    async fn create_empty(
        &self,
        c: &CampaignHead<'_>,
        batch_size: u32,
        now: Millis,
        status: Status,
        key: Option<&IdempotencyKey>,
    ) -> Result<Opened, StoreError> {
        let mut tx = self.write.begin().await?;
        if let Some(k) = key {
            let seen = sqlx::query(&format!(
                "SELECT i.fingerprint, i.campaign_id, c.status FROM idempotency_keys i \
                 JOIN campaigns c ON c.id = i.campaign_id WHERE i.key = $1{}",
                self.backend.for_update()
            ))
            .bind(&k.key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(seen) = seen {
                if seen.get::<String, _>("fingerprint") != k.fingerprint {
                    return Err(StoreError::Conflict(
                        "this Idempotency-Key was used with other campaign fields".into(),
                    ));
                }
                if seen.get::<String, _>("status") == Status::Importing.as_str() {
                    return Err(StoreError::Conflict(
                        "the request with this Idempotency-Key is still importing its list".into(),
                    ));
                }
                let id: String = seen.get("campaign_id");
                tx.commit().await?;
                return Ok(Opened::Replay(self.campaign(&id).await?));
            }
        }
        let id = format!("c{}", uuid::Uuid::now_v7().simple());
        let importing = status == Status::Importing;
        sqlx::query(
            "INSERT INTO campaigns (id, name, from_json, reply_to_json, template_name, template_json, status, \
             batch_size, total, duplicates, created_ms, per_minute, priority, send_at_ms, window_json, import_heard_ms, \
             track_opens, track_clicks) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&id)
        .bind(c.name)
        .bind(to_json(c.from))
        .bind(c.reply_to.map(to_json))
        .bind(c.template_name)
        .bind(to_json(c.template))
        .bind(status.as_str())
        .bind(i64::from(batch_size.max(1)))
        .bind(now)
        .bind(c.limits.per_minute.map(i64::from))
        .bind(i64::from(c.limits.priority))
        .bind(c.limits.send_at_ms)
        .bind(c.limits.window.as_ref().map(to_json))
        .bind(importing.then_some(now))
        .bind(i64::from(c.track.opens))
        .bind(i64::from(c.track.clicks))
        .execute(&mut *tx)
        .await?;
        if let Some(k) = key {
            // Two first requests at once on PostgreSQL: one inserts, the other is told to wait.
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (key, fingerprint, campaign_id, created_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(&k.key)
            .bind(&k.fingerprint)
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                return Err(StoreError::Conflict(
                    "the request with this Idempotency-Key is still importing its list".into(),
                ));
            }
        }
        tx.commit().await?;
        Ok(Opened::New(self.campaign(&id).await?))
    }

    async fn begin_upload(&self, id: &str, now: Millis) -> Result<(), StoreError> {
        let row = sqlx::query("SELECT status, import_heard_ms FROM campaigns WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let status = Status::parse(row.get("status"))?;
        match status {
            Status::Draft => {}
            Status::Discarded => return Err(StoreError::NotFound(id.to_string())),
            other => {
                return Err(StoreError::Conflict(format!(
                    "campaign {id} is {}: only a draft takes a new list",
                    other.as_str()
                )))
            }
        }
        // Conditional: of two uploads at once, one begins.
        let fresh = now - super::IMPORT_SILENCE_MS;
        let begun = sqlx::query(
            "UPDATE campaigns SET import_heard_ms = $1 WHERE id = $2 AND status = 'draft' \
             AND (import_heard_ms IS NULL OR import_heard_ms < $3)",
        )
        .bind(now)
        .bind(id)
        .bind(fresh)
        .execute(&self.write)
        .await?
        .rows_affected();
        if begun == 0 {
            return Err(StoreError::Conflict(format!(
                "another upload of campaign {id}'s list is running"
            )));
        }
        self.clear_rows(id, u64::MAX).await?;
        Ok(())
    }

    async fn import_chunk(
        &self,
        id: &str,
        rows: &[renderer::RecipientData],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write.begin().await?;
        // Only a campaign still importing takes rows: one abandoned meanwhile takes none.
        let size: Option<i64> = sqlx::query_scalar(
            "UPDATE campaigns SET import_heard_ms = $1 WHERE id = $2 AND import_heard_ms IS NOT NULL \
             AND status IN ('importing', 'draft') RETURNING batch_size",
        )
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let size = size
            .ok_or_else(|| StoreError::Conflict(format!("campaign {id} is not importing a list")))?
            .max(1);
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            tx.commit().await?;
            return Ok(0);
        };
        let json_rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "batch": planner::batch_of(r.id, size as u32),
                    "email": r.email,
                    "key": sender::safety::canonical(&r.email),
                    "name": r.name,
                    "data": to_json(&r.data),
                })
            })
            .collect();
        let json_rows = to_json(&json_rows);
        let inserted = sqlx::query(self.backend.insert_recipients())
            .bind(id)
            .bind(now)
            .bind(&json_rows)
            .fetch_all(&mut *tx)
            .await?;
        if let Some(sql) = self.backend.insert_data() {
            sqlx::query(sql)
                .bind(id)
                .bind(&json_rows)
                .execute(&mut *tx)
                .await?;
        }
        drop(json_rows);
        let mut tally = Tally::default();
        let mut sizes: std::collections::BTreeMap<i64, i64> = Default::default();
        for row in &inserted {
            let batch: i64 = row.get("batch");
            let key: Option<String> = row.get("email_key");
            tally.added(
                id,
                batch,
                key.as_deref().unwrap_or(""),
                RecipientState::Pending,
            );
            *sizes.entry(batch).or_default() += 1;
        }
        let sizes: Vec<(i64, i64)> = sizes.into_iter().collect();
        for chunk in sizes.chunks(500) {
            let sql = format!(
                "INSERT INTO batches (campaign_id, n, size) VALUES {} \
                 ON CONFLICT (campaign_id, n) DO UPDATE SET size = batches.size + excluded.size",
                values(chunk.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for (n, len) in chunk {
                q = q.bind(id).bind(*n).bind(*len);
            }
            q.execute(&mut *tx).await?;
        }
        // Addresses that bounced hard, complained or unsubscribed are kept, counted, never mailed.
        // The chunk's batches bound the index scan (campaign, state, batch, id): its ids alone do
        // not, and every pending row of the campaign was walked for every chunk.
        let suppressed = sqlx::query(&format!(
            "UPDATE recipients SET state = 'suppressed', reason = 'on the suppression list' \
             WHERE campaign_id = $1 AND state = 'pending' AND batch >= $2 AND batch <= $3 \
             AND id >= $4 AND id <= $5 AND email_key IN (SELECT email FROM suppressions){MOVED}"
        ))
        .bind(id)
        .bind(i64::from(planner::batch_of(first.id, size as u32)))
        .bind(i64::from(planner::batch_of(last.id, size as u32)))
        .bind(first.id)
        .bind(last.id)
        .fetch_all(&mut *tx)
        .await?;
        tally.moved_rows(
            id,
            &suppressed,
            RecipientState::Pending,
            RecipientState::Suppressed,
        );
        let dropped = (rows.len() - inserted.len()) as i64;
        sqlx::query(
            "UPDATE campaigns SET total = total + $1, duplicates = duplicates + $2 WHERE id = $3",
        )
        .bind(inserted.len() as i64)
        .bind(dropped)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tally.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(dropped as u64)
    }

    async fn touch_import(&self, id: &str, now: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE campaigns SET import_heard_ms = $1 WHERE id = $2 AND import_heard_ms IS NOT NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn finish_import(
        &self,
        id: &str,
        _now: Millis,
        start: bool,
    ) -> Result<Campaign, StoreError> {
        let mut tx = self.write.begin().await?;
        let sizes = sqlx::query(
            "SELECT count(*) AS batches, CAST(coalesce(sum(size), 0) AS BIGINT) AS recipients \
             FROM batches WHERE campaign_id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let batches: i64 = sizes.get("batches");
        let recipients: i64 = sizes.get("recipients");
        let done = sqlx::query(
            "UPDATE campaigns SET status = $1, import_heard_ms = NULL, batches_total = $2 \
             WHERE id = $3 AND import_heard_ms IS NOT NULL AND status IN ('importing', 'draft')",
        )
        .bind(if start { "running" } else { "draft" })
        .bind(batches)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Err(StoreError::Conflict(format!(
                "campaign {id} is not importing a list"
            )));
        }
        tx.commit().await?;
        if self.backend == Backend::Postgres && recipients >= ANALYZE_AFTER_IMPORT {
            // PostgreSQL's planner still believes the statistics from before the import (autovacuum
            // samples again a minute later at best): a campaign it thinks has a few hundred rows gets
            // plans that scan the whole campaign on every lease and report. ANALYZE reads a bounded
            // sample (300 × the statistics target, 30,000 rows by default), not the table: about
            // 0.5 s a table at 10,000,000 rows.
            for table in ["recipients", "recipient_data", "batches"] {
                if let Err(e) = sqlx::query(&format!("ANALYZE {table}"))
                    .execute(&self.write)
                    .await
                {
                    tracing::warn!(table, error = %e, "could not refresh the planner's statistics");
                }
            }
        }
        self.campaign(id).await
    }

    async fn abandon_import(&self, id: &str, _now: Millis) -> Result<(), StoreError> {
        // Read where it is written: a read connection may still see a snapshot from before the
        // campaign existed, and then nothing would be abandoned.
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.write)
                .await?;
        match status.as_deref().map(Status::parse).transpose()? {
            Some(Status::Importing) => {
                let mut tx = self.write.begin().await?;
                sqlx::query(
                    "UPDATE campaigns SET status = 'discarded', import_heard_ms = NULL \
                     WHERE id = $1 AND status = 'importing'",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM idempotency_keys WHERE campaign_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Some(Status::Draft) => {
                self.clear_rows(id, u64::MAX).await?;
                sqlx::query("UPDATE campaigns SET import_heard_ms = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&self.write)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn abandon_stale_imports(
        &self,
        before: Millis,
        now: Millis,
    ) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM campaigns WHERE import_heard_ms < $1 AND status IN ('importing', 'draft')",
        )
        .bind(before)
        .fetch_all(&self.read)
        .await?;
        for id in &ids {
            self.abandon_import(id, now).await?;
        }
        Ok(ids)
    }

    async fn purge(&self, budget: u64, keys_before: Millis) -> Result<u64, StoreError> {
        sqlx::query("DELETE FROM idempotency_keys WHERE created_ms < $1")
            .bind(keys_before)
            .execute(&self.write)
            .await?;
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM campaigns WHERE status = 'discarded'")
                .fetch_all(&self.read)
                .await?;
        let mut removed = 0;
        for id in ids {
            if removed >= budget {
                break;
            }
            let (n, empty) = self.clear_rows(&id, budget - removed).await?;
            removed += n;
            if empty {
                sqlx::query("DELETE FROM campaigns WHERE id = $1 AND status = 'discarded'")
                    .bind(&id)
                    .execute(&self.write)
                    .await?;
            }
        }
        Ok(removed)
    }

    async fn prune_history(
        &self,
        leases_before: Millis,
        minutes_before: Millis,
        budget: u64,
    ) -> Result<u64, StoreError> {
        let chunk = budget.clamp(1, 5_000) as i64;
        let mut removed = 0;
        while removed < budget {
            let n = sqlx::query(
                "DELETE FROM leases WHERE id IN (SELECT id FROM leases \
                 WHERE closed_ms IS NOT NULL AND closed_ms < $1 ORDER BY closed_ms LIMIT $2)",
            )
            .bind(leases_before)
            .bind(chunk)
            .execute(&self.write)
            .await?
            .rows_affected();
            removed += n;
            if n < chunk as u64 {
                break;
            }
        }
        while removed < budget {
            // An hour of minutes per transaction: every scope's rows of a minute go together.
            let oldest: Option<i64> =
                sqlx::query_scalar("SELECT min(minute_ms) FROM minute_ledger WHERE minute_ms < $1")
                    .bind(minutes_before)
                    .fetch_one(&self.read)
                    .await?;
            let Some(oldest) = oldest else { break };
            let upto = minutes_before.min(oldest + 60 * 60_000);
            let mut tx = self.write.begin().await?;
            let sums = sqlx::query(
                "SELECT scope, CAST(sum(granted) AS BIGINT) AS granted, CAST(sum(used) AS BIGINT) AS used, \
                 CAST(sum(sent) AS BIGINT) AS sent, \
                 CAST(sum(CASE WHEN granted > used THEN granted - used ELSE 0 END) AS BIGINT) AS forfeited \
                 FROM minute_ledger WHERE minute_ms < $1 GROUP BY scope ORDER BY scope",
            )
            .bind(upto)
            .fetch_all(&mut *tx)
            .await?;
            for row in &sums {
                sqlx::query(
                    "INSERT INTO ledger_totals (scope, granted, used, sent, forfeited) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (scope) DO UPDATE SET granted = ledger_totals.granted + excluded.granted, \
                     used = ledger_totals.used + excluded.used, sent = ledger_totals.sent + excluded.sent, \
                     forfeited = ledger_totals.forfeited + excluded.forfeited",
                )
                .bind(row.get::<String, _>("scope"))
                .bind(row.get::<i64, _>("granted"))
                .bind(row.get::<i64, _>("used"))
                .bind(row.get::<i64, _>("sent"))
                .bind(row.get::<i64, _>("forfeited"))
                .execute(&mut *tx)
                .await?;
            }
            removed += sqlx::query("DELETE FROM minute_ledger WHERE minute_ms < $1")
                .bind(upto)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
        }
        Ok(removed)
    }

    async fn start(&self, id: &str, _now: Millis) -> Result<Campaign, StoreError> {
        let started = sqlx::query(
            "UPDATE campaigns SET status = 'running' WHERE id = $1 AND status = 'draft' \
             AND import_heard_ms IS NULL AND total > 0",
        )
        .bind(id)
        .execute(&self.write)
        .await?
        .rows_affected();
        let c = self.campaign(id).await?;
        if started == 0 {
            match c.status {
                // Started already (a retried request): the same answer.
                Status::Running | Status::Paused | Status::Completed => {}
                Status::Draft if c.counts.total == 0 => {
                    return Err(StoreError::Conflict(format!(
                        "campaign {id} has no recipients: PUT /v1/campaigns/{id}/recipients first"
                    )))
                }
                other => {
                    return Err(StoreError::Conflict(format!(
                        "campaign {id} is {}{} and cannot be started",
                        other.as_str(),
                        if other == Status::Draft {
                            " with its list still uploading"
                        } else {
                            ""
                        }
                    )))
                }
            }
        }
        Ok(c)
    }

    async fn template(&self, id: &str) -> Result<TemplateSource, StoreError> {
        let t: String = sqlx::query_scalar(
            "SELECT template_json FROM campaigns WHERE id = $1 AND status <> 'discarded'",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        json(&t)
    }

    async fn message_head(&self, id: &str) -> Result<RenderInput, StoreError> {
        Ok(self.head(id).await?.input)
    }

    async fn message_input(&self, id: &str, recipient: i64) -> Result<RenderInput, StoreError> {
        let Head {
            mut input, purged, ..
        } = self.head(id).await?;
        // Past its retention a campaign's messages are gone, whatever data is still kept.
        if purged {
            return Err(StoreError::NoRecipient(id.to_string(), recipient));
        }
        let r = sqlx::query(
            "SELECT r.id, r.email, r.name, d.data FROM recipients r \
             JOIN recipient_data d ON d.campaign_id = r.campaign_id AND d.id = r.id \
             WHERE r.campaign_id = $1 AND r.id = $2",
        )
        .bind(id)
        .bind(recipient)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NoRecipient(id.to_string(), recipient))?;
        input.recipients.push(recipient_data(&r)?);
        Ok(input)
    }

    async fn campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM campaigns WHERE status <> 'discarded' ORDER BY created_ms DESC, id DESC LIMIT 500")
                .fetch_all(&self.read)
                .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.get("id")).collect();
        let mut counts = self.counts(&ids).await?;
        rows.into_iter()
            .zip(&ids)
            .map(|(row, id)| Self::campaign_of(row, counts.remove(id).unwrap_or_default()))
            .collect()
    }

    async fn campaign(&self, id: &str) -> Result<Campaign, StoreError> {
        let row = sqlx::query("SELECT * FROM campaigns WHERE id = $1 AND status <> 'discarded'")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        self.load(row).await
    }

    async fn act(
        &self,
        id: &str,
        action: Action,
        now: Millis,
    ) -> Result<(Campaign, bool), StoreError> {
        let mut tx = self.write.begin().await?;
        let status: String = sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let status = Status::parse(&status)?;
        use Status::*;
        let next = match (action, status) {
            (Action::Pause, Running | Paused) => Paused,
            (Action::Resume, Running | Paused) => Running,
            (Action::Cancel, Running | Paused | Cancelled | Draft) => Cancelled,
            (_, Discarded) => return Err(StoreError::NotFound(id.to_string())),
            (_, s) => {
                return Err(StoreError::Conflict(format!(
                    "campaign {id} is {} and cannot be {}",
                    s.as_str(),
                    match action {
                        Action::Pause => "paused",
                        Action::Resume => "resumed",
                        Action::Cancel => "cancelled",
                    }
                )))
            }
        };
        sqlx::query(
            "UPDATE campaigns SET status = $1, status_reason = NULL, \
             completed_ms = CASE WHEN $2 = 'cancelled' THEN coalesce(completed_ms, $3) ELSE completed_ms END WHERE id = $4",
        )
        .bind(next.as_str())
        .bind(next.as_str())
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if next == Cancelled {
            // Nothing is leased from it any more; what was waiting is marked cancelled in chunks,
            // the first here and the rest by the reconcile loop.
            self.sweep_cancelled_one(id, now, CANCEL_NOW).await?;
        }
        Ok((self.campaign(id).await?, next != status))
    }

    async fn batches_to_render(
        &self,
        stale_before: Millis,
        now: Millis,
        ahead: u32,
        limit: u32,
    ) -> Result<Vec<RenderJob>, StoreError> {
        let campaigns = sqlx::query(
            "SELECT id, batch_size FROM campaigns WHERE status IN ('running', 'paused') ORDER BY created_ms, id",
        )
        .fetch_all(&self.read)
        .await?;
        let mut jobs = Vec::new();
        for c in campaigns {
            let room = limit as usize - jobs.len();
            if room == 0 {
                break;
            }
            let cid: String = c.get("id");
            let size = c.get::<i64, _>("batch_size").max(1);
            // The window, in batches: rendered ones still waiting to be sent, and ones handed out
            // and not yet rendered, together at most this many.
            let window = (i64::from(ahead) + size - 1) / size;
            let window = window.max(2);
            let mut tx = self.write.begin().await?;
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT 1 FROM batches WHERE campaign_id = $1 AND ready > 0 LIMIT $2) w",
            )
            .bind(&cid)
            .bind(window)
            .fetch_one(&mut *tx)
            .await?;
            let next = sqlx::query(&format!(
                "SELECT n, dispatched_ms FROM batches WHERE campaign_id = $1 AND rendered_ms IS NULL \
                 ORDER BY n LIMIT $2{}",
                self.backend.skip_locked("batches")
            ))
            .bind(&cid)
            .bind(window)
            .fetch_all(&mut *tx)
            .await?;
            let rendering = next
                .iter()
                .filter(|b| {
                    b.get::<Option<i64>, _>("dispatched_ms")
                        .is_some_and(|t| t >= stale_before)
                })
                .count() as i64;
            let free = (window - waiting - rendering).max(0) as usize;
            let mut mine = Vec::new();
            for b in next
                .iter()
                .filter(|b| {
                    b.get::<Option<i64>, _>("dispatched_ms")
                        .is_none_or(|t| t < stale_before)
                })
                .take(free.min(room))
            {
                let n: i64 = b.get("n");
                sqlx::query(
                    "UPDATE batches SET dispatched_ms = $1 WHERE campaign_id = $2 AND n = $3",
                )
                .bind(now)
                .bind(&cid)
                .bind(n)
                .execute(&mut *tx)
                .await?;
                mine.push(RenderJob {
                    campaign_id: cid.clone(),
                    batch: n as u32,
                });
            }
            tx.commit().await?;
            jobs.extend(mine);
        }
        Ok(jobs)
    }

    async fn reset_dispatch(&self) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE batches SET dispatched_ms = NULL, render_claim_ms = NULL WHERE rendered_ms IS NULL",
        )
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn claim_render(
        &self,
        job: &RenderJob,
        now: Millis,
        hold_ms: i64,
    ) -> Result<Option<RenderInput>, StoreError> {
        let claimed = sqlx::query(
            "UPDATE batches SET render_claim_ms = $1 WHERE campaign_id = $2 AND n = $3 AND rendered_ms IS NULL \
             AND (render_claim_ms IS NULL OR render_claim_ms < $4) \
             AND EXISTS (SELECT 1 FROM campaigns c WHERE c.id = $5 AND c.status IN ('running', 'paused'))",
        )
        .bind(now)
        .bind(&job.campaign_id)
        .bind(i64::from(job.batch))
        .bind(now - hold_ms)
        .bind(&job.campaign_id)
        .execute(&self.write)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(None);
        }
        let Head {
            mut input,
            batch_size,
            ..
        } = self.head(&job.campaign_id).await?;
        // A batch is a range of ids: read by the primary key, whatever the campaign's size.
        let ids = planner::ids_of(job.batch, batch_size);
        let rows = sqlx::query(
            "SELECT r.id, r.email, r.name, d.data FROM recipients r \
             JOIN recipient_data d ON d.campaign_id = r.campaign_id AND d.id = r.id \
             WHERE r.campaign_id = $1 AND r.id >= $2 AND r.id < $3 AND r.batch = $4 ORDER BY r.id",
        )
        .bind(&job.campaign_id)
        .bind(ids.start)
        .bind(ids.end)
        .bind(i64::from(job.batch))
        .fetch_all(&self.read)
        .await?;
        input.recipients = rows
            .iter()
            .map(recipient_data)
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(input))
    }

    async fn batch_rendered(
        &self,
        job: &RenderJob,
        key: &str,
        failed: &[(i64, String)],
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let size: Option<i64> = sqlx::query_scalar(
            "UPDATE batches SET body_key = $1, rendered_ms = $2 WHERE campaign_id = $3 AND n = $4 \
             AND rendered_ms IS NULL RETURNING size",
        )
        .bind(key)
        .bind(now)
        .bind(&job.campaign_id)
        .bind(i64::from(job.batch))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(size) = size else {
            return Ok(()); // rendered twice: the same bytes, already recorded
        };
        let cid = &job.campaign_id;
        let mut tally = Tally::default();
        tally.batch_rendered(cid, size, 1);
        for (id, reason) in failed {
            let rows = sqlx::query(&format!(
                "UPDATE recipients SET state = 'failed', reason = $1, updated_ms = $2 \
                 WHERE campaign_id = $3 AND id = $4 AND state = 'pending'{MOVED}"
            ))
            .bind(format!("render: {reason}"))
            .bind(now)
            .bind(cid)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            tally.moved_rows(cid, &rows, RecipientState::Pending, RecipientState::Failed);
        }
        let rows = sqlx::query(&format!(
            "UPDATE recipients SET state = 'rendered', updated_ms = $1 \
             WHERE campaign_id = $2 AND batch = $3 AND state = 'pending'{MOVED}"
        ))
        .bind(now)
        .bind(cid)
        .bind(i64::from(job.batch))
        .fetch_all(&mut *tx)
        .await?;
        tally.moved_rows(
            cid,
            &rows,
            RecipientState::Pending,
            RecipientState::Rendered,
        );
        tally.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lease(&self, r: LeaseRules) -> Result<LeaseReply, StoreError> {
        let minute = sender::clock::minute_start(r.now);
        let mut tx = self.write.begin().await?;
        // Scheduled for later or outside their own window: not this minute's business.
        let mut runnable = Vec::new();
        for row in sqlx::query(RUNNING).fetch_all(&mut *tx).await? {
            let c = running_row(&row)?;
            if c.may_send(r.now) {
                runnable.push(c);
            }
        }
        let weights: Vec<(String, u32)> = runnable
            .iter()
            .map(|c| (c.id.clone(), c.priority))
            .collect();
        let order = self.fair.lock().expect("fair poisoned").order(&weights);
        // Domains whose budget this minute is spent: their recipients wait, the others go on.
        let full: Vec<String> = sqlx::query_scalar(
            "SELECT scope FROM minute_ledger WHERE minute_ms = $1 AND granted >= cap AND scope LIKE 'domain:%'",
        )
        .bind(minute)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .filter_map(|s: String| match Scope::parse(&s) {
            Some(Scope::Domain(d)) => Some(d),
            _ => None,
        })
        .collect();
        let mut blocked = false;
        let mut tally = Tally::default();
        for cid in &order {
            let Some(c) = runnable.iter().find(|c| &c.id == cid) else {
                continue;
            };
            let Some(pick) = self.mailable(&mut tx, &mut tally, c, &r, &full).await? else {
                continue;
            };
            let own = c.per_minute;
            let mut scopes = vec![(Scope::Global, r.cap)];
            if let Some(cap) = own {
                scopes.push((Scope::Campaign(cid.clone()), cap));
            }
            if let Some((d, cap)) = &pick.domain {
                scopes.push((Scope::Domain(d.clone()), *cap));
            }
            // Each minute's rows are created with the caps in force when the minute is first touched,
            // then locked for the claim: claims by every conductor on this minute take turns here.
            let rows = self.ledger_rows(&mut tx, &mut scopes, minute).await?;
            let input: Vec<_> = rows
                .iter()
                .zip(&scopes)
                .map(|(row, (_, cap))| (Some(*row), *cap))
                .collect();
            let (grant, next) =
                ledger::claim_all(&input, pick.rows.len() as u32, r.now, r.margin_ms);
            if grant.tokens == 0 {
                let global = rows[scopes
                    .iter()
                    .position(|(s, _)| *s == Scope::Global)
                    .unwrap_or(0)];
                if global.granted >= global.cap || r.now >= grant.deadline {
                    // The account's budget is spent: nobody gets anything before the next minute.
                    tally.apply(&mut tx).await?;
                    tx.commit().await?;
                    return Ok(LeaseReply::NoTokens {
                        until: sender::clock::minute_end(r.now),
                    });
                }
                // Only this campaign's own cap is spent (or its domain's): the next campaign's turn.
                blocked = true;
                continue;
            }
            for ((scope, _), row) in scopes.iter().zip(&next) {
                sqlx::query("UPDATE minute_ledger SET granted = $1, next_slot_ms = $2 WHERE scope = $3 AND minute_ms = $4")
                    .bind(i64::from(row.granted))
                    .bind(row.next_slot)
                    .bind(scope.to_string())
                    .bind(row.minute)
                    .execute(&mut *tx)
                    .await?;
            }

            let taken = &pick.rows[..grant.tokens as usize];
            let ids: Vec<i64> = taken.iter().map(|row| row.id).collect();
            for row in taken {
                tally.moved(cid, pick.batch, &row.key, row.state, RecipientState::Leased);
            }
            let lease_id = uuid::Uuid::new_v4().simple().to_string();
            let sql = format!(
                "UPDATE recipients SET state = 'leased', lease_id = $1, updated_ms = $2 \
                 WHERE campaign_id = $3 AND {} AND id IN ({})",
                self.backend.id_within(4),
                placeholders(6, ids.len())
            );
            let (lo, hi) = (
                ids.iter().copied().min().unwrap_or(0),
                ids.iter().copied().max().unwrap_or(0),
            );
            let mut q = sqlx::query(&sql)
                .bind(&lease_id)
                .bind(r.now)
                .bind(cid)
                .bind(lo)
                .bind(hi);
            for id in &ids {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
            let scope_names: Vec<String> = scopes.iter().map(|(s, _)| s.to_string()).collect();
            sqlx::query(
                "INSERT INTO leases (id, campaign_id, batch, minute_ms, tokens, created_ms, expires_ms, \
                 heard_ms, first_at_ms, spacing_us, recipients, scopes) VALUES ($1, $2, $3, $4, $5, $6, $7, $6, $8, $9, $10, $11)",
            )
            .bind(&lease_id)
            .bind(cid)
            .bind(pick.batch)
            .bind(grant.minute)
            .bind(i64::from(grant.tokens))
            .bind(r.now)
            .bind(grant.spend_by + r.ttl_ms)
            .bind(grant.first_at)
            .bind(grant.spacing_us)
            .bind(to_json(&ids))
            .bind(to_json(&scope_names))
            .execute(&mut *tx)
            .await?;
            let body_key: Option<String> = sqlx::query_scalar(
                "SELECT body_key FROM batches WHERE campaign_id = $1 AND n = $2",
            )
            .bind(cid)
            .bind(pick.batch)
            .fetch_one(&mut *tx)
            .await?;
            tally.apply(&mut tx).await?;
            tx.commit().await?;
            self.fair
                .lock()
                .expect("fair poisoned")
                .served(cid, &weights);
            return Ok(LeaseReply::Lease(SendLease {
                lease_id,
                campaign_id: cid.clone(),
                batch: pick.batch as u32,
                body_key: body_key.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "rendered recipients in unrendered batch {cid}/{}",
                        pick.batch
                    ))
                })?,
                recipients: ids,
                minute: grant.minute,
                first_at: grant.first_at,
                spacing_us: grant.spacing_us,
                deadline: grant.spend_by,
            }));
        }
        tally.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(if blocked {
            LeaseReply::NoTokens {
                until: sender::clock::minute_end(r.now),
            }
        } else {
            LeaseReply::Idle
        })
    }

    async fn report(
        &self,
        lease_id: &str,
        outcomes: &[RecipientOutcome],
        last: bool,
        r: ReportRules,
    ) -> Result<Reported, StoreError> {
        let mut tx = self.write.begin().await?;
        // Hearing from the sender and finding its lease is one statement (and, on PostgreSQL,
        // the lease row's lock for the rest of the report).
        let lease = sqlx::query(
            "UPDATE leases SET heard_ms = $1 WHERE id = $2 AND closed_ms IS NULL \
             RETURNING campaign_id, minute_ms, scopes",
        )
        .bind(r.now)
        .bind(lease_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::LeaseLost(lease_id.to_string()))?;
        let cid: String = lease.get("campaign_id");
        let minute: i64 = lease.get("minute_ms");
        // Leases from before scopes were recorded drew on the global scope alone.
        let scopes: Vec<Scope> = match lease.get::<Option<String>, _>("scopes") {
            Some(s) => json::<Vec<String>>(&s)?
                .iter()
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| StoreError::Corrupt(format!("lease scope {s:?}")))
                })
                .collect::<Result<_, _>>()?,
            None => vec![Scope::Global],
        };
        let cancelled = Self::cancelled(&mut tx, &cid).await?;
        // The reported recipients this lease still holds, with the requests each has made so far:
        // looked up by their ids, bounded by the ids' range (`id_within`), so a report costs what
        // it carries, not what the lease or the campaign has in flight.
        let mut ids: Vec<i64> = outcomes.iter().map(|o| o.recipient_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut held: std::collections::HashMap<i64, u32> =
            std::collections::HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT id, attempts, state, lease_id FROM recipients WHERE campaign_id = $1 \
                 AND {} AND id IN ({})",
                self.backend.id_within(2),
                placeholders(4, chunk.len())
            );
            // Sorted, so its ends are its range.
            let mut q = sqlx::query(&sql)
                .bind(&cid)
                .bind(chunk[0])
                .bind(chunk[chunk.len() - 1]);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *tx).await? {
                let holder: Option<&str> = row.get("lease_id");
                if holder == Some(lease_id) && row.get::<&str, _>("state") == "leased" {
                    held.insert(row.get("id"), row.get::<i64, _>("attempts").max(0) as u32);
                }
            }
        }
        let rules = SettleRules {
            max_attempts: r.max_attempts,
            resend_ambiguous: r.resend_ambiguous,
        };
        let mut tally = Tally::default();
        let (mut used, mut sent) = (0i64, 0i64);
        let mut pause = None;
        let mut unreadable = None;
        // Every outcome settled first, then written in one statement: a report costs one round
        // trip whatever its size. The first outcome given for a recipient is the one that counts.
        let mut settled: std::collections::HashMap<i64, (RecipientState, bool)> =
            std::collections::HashMap::with_capacity(outcomes.len());
        let mut changes = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let Some(&attempts) = held.get(&o.recipient_id) else {
                continue; // not this lease's, or settled before
            };
            if settled.contains_key(&o.recipient_id) {
                continue;
            }
            let t = recipient::settle(
                &o.outcome,
                attempts,
                rules,
                cancelled,
                r.now,
                rand::random::<f64>(),
            );
            match t.effect {
                Some(Effect::PauseCampaign(reason)) => pause = Some(reason),
                Some(Effect::RenderAgain(reason)) => unreadable = Some(reason),
                None => {}
            }
            settled.insert(o.recipient_id, (t.to, t.attempted));
            changes.push(serde_json::json!({
                "id": o.recipient_id,
                "to": t.to.as_str(),
                "reason": t.reason,
                "provider_id": t.provider_id,
                "retry_at": t.retry_at,
                "attempted": i64::from(t.attempted),
            }));
        }
        if !changes.is_empty() {
            let moved = sqlx::query(self.backend.settle_leased())
                .bind(r.now)
                .bind(to_json(&changes))
                .bind(&cid)
                .bind(lease_id)
                .fetch_all(&mut *tx)
                .await?;
            for row in &moved {
                let Some(&(to, attempted)) = settled.get(&row.get::<i64, _>("id")) else {
                    continue;
                };
                let key: Option<String> = row.get("email_key");
                tally.moved(
                    &cid,
                    row.get("batch"),
                    key.as_deref().unwrap_or(""),
                    RecipientState::Leased,
                    to,
                );
                if attempted {
                    used += 1;
                    sent += i64::from(to == RecipientState::Sent);
                }
            }
        }
        if used > 0 {
            tally.requests(&cid, used);
            for scope in &scopes {
                sqlx::query("UPDATE minute_ledger SET used = used + $1, sent = sent + $2 WHERE scope = $3 AND minute_ms = $4")
                    .bind(used)
                    .bind(sent)
                    .bind(scope.to_string())
                    .bind(minute)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if let Some(reason) = unreadable {
            Self::render_again(&mut tx, &mut tally, &cid, lease_id, &reason, r.now).await?;
        }
        if last {
            let back = RecipientState::back(cancelled);
            let rows = sqlx::query(&format!(
                "UPDATE recipients SET state = $1, lease_id = NULL, updated_ms = $2 \
                 WHERE lease_id = $3 AND state = 'leased'{MOVED}"
            ))
            .bind(back.as_str())
            .bind(r.now)
            .bind(lease_id)
            .fetch_all(&mut *tx)
            .await?;
            tally.moved_rows(&cid, &rows, RecipientState::Leased, back);
            sqlx::query("UPDATE leases SET closed_ms = $1 WHERE id = $2")
                .bind(r.now)
                .bind(lease_id)
                .execute(&mut *tx)
                .await?;
        }
        tally.apply(&mut tx).await?;
        let mut stopped = None;
        if let Some(reason) = pause {
            let paused = sqlx::query(
                "UPDATE campaigns SET status = 'paused', status_reason = $1 WHERE id = $2 AND status = 'running'",
            )
            .bind(reason)
            .bind(&cid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if paused > 0 {
                stopped = Some(cid.clone());
            }
        }
        // One counter row per open state: what this costs does not grow with the campaign.
        let drained = last
            && sqlx::query_scalar::<_, i64>(&format!(
                "SELECT count(*) FROM recipient_counts WHERE campaign_id = $1 \
                 AND state IN {OPEN_STATES} AND n > 0"
            ))
            .bind(&cid)
            .fetch_one(&mut *tx)
            .await?
                == 0;
        tx.commit().await?;
        Ok(Reported {
            paused: stopped,
            drained,
        })
    }

    async fn expire_leases(&self, now: Millis, resend_ambiguous: bool) -> Result<u64, StoreError> {
        let mut tx = self.write.begin().await?;
        let leases = sqlx::query(
            "SELECT id, campaign_id, heard_ms, first_at_ms, spacing_us, recipients FROM leases \
             WHERE closed_ms IS NULL AND expires_ms < $1",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut lost = 0;
        let mut tally = Tally::default();
        for lease in leases {
            let id: String = lease.get("id");
            let campaign: String = lease.get("campaign_id");
            let unreported: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM recipients WHERE lease_id = $1 AND state = 'leased' ORDER BY id",
            )
            .bind(&id)
            .fetch_all(&mut *tx)
            .await?;
            // The sender fell silent. What it may have started is held as `unknown`, never resent
            // silently; what was slotted after it could have stopped goes back to the queue.
            let order: Option<Vec<i64>> = lease
                .get::<Option<String>, _>("recipients")
                .map(|j| json(&j))
                .transpose()?;
            let (in_doubt, never_started) = match (order, lease.get::<Option<i64>, _>("heard_ms")) {
                (Some(order), Some(heard)) => ledger::settle_silent_lease(
                    &order,
                    &unreported,
                    lease.get::<Option<i64>, _>("first_at_ms").unwrap_or(0),
                    lease.get::<Option<i64>, _>("spacing_us").unwrap_or(0),
                    heard,
                ),
                _ => (unreported, Vec::new()),
            };
            let cancelled = Self::cancelled(&mut tx, &campaign).await?;
            for (ids, doubt) in [(&in_doubt, true), (&never_started, false)] {
                let (to, reason) = recipient::silent(doubt, resend_ambiguous, cancelled);
                for chunk in ids.chunks(500) {
                    let sql = format!(
                        "UPDATE recipients SET state = $1, reason = $2, lease_id = NULL, updated_ms = $3 \
                         WHERE lease_id = $4 AND state = 'leased' AND id IN ({}){MOVED}",
                        placeholders(5, chunk.len())
                    );
                    let mut q = sqlx::query(&sql)
                        .bind(to.as_str())
                        .bind(reason)
                        .bind(now)
                        .bind(&id);
                    for rid in chunk {
                        q = q.bind(*rid);
                    }
                    let rows = q.fetch_all(&mut *tx).await?;
                    tally.moved_rows(&campaign, &rows, RecipientState::Leased, to);
                    if doubt {
                        lost += rows.len() as u64;
                    }
                }
            }
            sqlx::query("UPDATE leases SET closed_ms = $1 WHERE id = $2")
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        tally.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(lost)
    }

    async fn sweep_cancelled(&self, now: Millis, budget: u64) -> Result<u64, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT c.id FROM campaigns c JOIN recipient_counts k ON k.campaign_id = c.id \
             WHERE c.status = 'cancelled' AND k.state IN ('pending', 'rendered', 'deferred') AND k.n > 0",
        )
        .fetch_all(&self.read)
        .await?;
        let mut moved = 0;
        for id in ids {
            if moved >= budget {
                break;
            }
            moved += self.sweep_cancelled_one(&id, now, budget - moved).await?;
        }
        Ok(moved)
    }

    async fn recount(&self, id: &str) -> Result<Vec<String>, StoreError> {
        use std::collections::BTreeMap;
        let mut wrong = Vec::new();
        // One snapshot for every read below, so that writes going on meanwhile cannot make rows
        // and counters seem to disagree.
        let mut tx = self.read.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let kept: BTreeMap<String, i64> =
            sqlx::query("SELECT state, n FROM recipient_counts WHERE campaign_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| (r.get("state"), r.get("n")))
                .collect();
        let mut states: BTreeMap<String, i64> = BTreeMap::new();
        let mut open: BTreeMap<String, i64> = BTreeMap::new();
        let mut ready: BTreeMap<i64, i64> = BTreeMap::new();
        // Streamed: the rows are counted as they come, never held.
        let mut rows = sqlx::query(
            "SELECT state, batch, email_key FROM recipients WHERE campaign_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch(&mut *tx);
        while let Some(r) = futures::TryStreamExt::try_next(&mut rows).await? {
            let r = &r;
            let state: String = r.get("state");
            let parsed = RecipientState::parse(&state);
            if parsed.is_some_and(RecipientState::is_open) {
                let key: Option<String> = r.get("email_key");
                *open
                    .entry(domain_of(key.as_deref().unwrap_or("")).to_string())
                    .or_default() += 1;
            }
            if parsed == Some(RecipientState::Rendered) {
                *ready.entry(r.get("batch")).or_default() += 1;
            }
            *states.entry(state).or_default() += 1;
        }
        drop(rows);
        let differ = |what: String, kept: i64, counted: i64, wrong: &mut Vec<String>| {
            if kept != counted {
                wrong.push(format!("{what}: kept {kept}, counted {counted}"));
            }
        };
        for s in RecipientState::ALL {
            let k = kept.get(s.as_str()).copied().unwrap_or(0);
            let c = states.get(s.as_str()).copied().unwrap_or(0);
            differ(format!("state {}", s.as_str()), k, c, &mut wrong);
        }
        for (s, c) in &states {
            if RecipientState::parse(s).is_none() {
                wrong.push(format!("{c} recipients in unknown state {s:?}"));
            }
        }
        let kept_open: BTreeMap<String, i64> =
            sqlx::query("SELECT domain, open FROM domain_counts WHERE campaign_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| (r.get("domain"), r.get("open")))
                .collect();
        for d in kept_open
            .keys()
            .chain(open.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let k = kept_open.get(d).copied().unwrap_or(0);
            let c = open.get(d).copied().unwrap_or(0);
            differ(format!("open at {d}"), k, c, &mut wrong);
        }
        let batches = sqlx::query(
            "SELECT n, size, ready, rendered_ms FROM batches WHERE campaign_id = $1 ORDER BY n",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let (mut done, mut rendered) = (0i64, 0i64);
        for b in &batches {
            let n: i64 = b.get("n");
            differ(
                format!("batch {n} ready"),
                b.get("ready"),
                ready.get(&n).copied().unwrap_or(0),
                &mut wrong,
            );
            if b.get::<Option<i64>, _>("rendered_ms").is_some() {
                done += 1;
                rendered += b.get::<i64, _>("size");
            }
        }
        let c = sqlx::query(
            "SELECT batches_total, batches_rendered, rendered_total FROM campaigns WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        differ(
            "batches".into(),
            c.get("batches_total"),
            batches.len() as i64,
            &mut wrong,
        );
        differ(
            "batches rendered".into(),
            c.get("batches_rendered"),
            done,
            &mut wrong,
        );
        differ(
            "recipients rendered".into(),
            c.get("rendered_total"),
            rendered,
            &mut wrong,
        );
        Ok(wrong)
    }

    async fn complete_finished(&self, now: Millis) -> Result<Vec<String>, StoreError> {
        let candidates: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT c.id FROM campaigns c WHERE c.status = 'running' AND NOT EXISTS \
             (SELECT 1 FROM recipient_counts k WHERE k.campaign_id = c.id AND k.state IN {OPEN_STATES} AND k.n > 0)"
        ))
        .fetch_all(&self.read)
        .await?;
        let mut done = Vec::with_capacity(candidates.len());
        for id in candidates {
            // Conditional, so that of several conductors exactly one completes it (and says so).
            let changed = sqlx::query(&format!(
                "UPDATE campaigns SET status = 'completed', completed_ms = $1 WHERE id = $2 AND status = 'running' \
                 AND NOT EXISTS (SELECT 1 FROM recipient_counts k WHERE k.campaign_id = $3 \
                 AND k.state IN {OPEN_STATES} AND k.n > 0)"
            ))
            .bind(now)
            .bind(&id)
            .bind(&id)
            .execute(&self.write)
            .await?
            .rows_affected();
            if changed > 0 {
                done.push(id);
            }
        }
        Ok(done)
    }

    async fn mark_started(&self, now: Millis) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE campaigns SET started_ms = $1 WHERE started_ms IS NULL \
             AND EXISTS (SELECT 1 FROM leases l WHERE l.campaign_id = campaigns.id) RETURNING id",
        )
        .bind(now)
        .fetch_all(&self.write)
        .await?;
        Ok(ids)
    }

    async fn bodies_to_purge(&self, ended_before: Millis) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT c.id FROM campaigns c WHERE c.status IN ('completed', 'cancelled') \
             AND c.bodies_purged_ms IS NULL AND c.completed_ms < $1 \
             AND NOT EXISTS (SELECT 1 FROM recipient_counts k WHERE k.campaign_id = c.id AND k.state = 'leased' AND k.n > 0) \
             ORDER BY c.completed_ms LIMIT 100",
        )
        .bind(ended_before)
        .fetch_all(&self.read)
        .await?)
    }

    async fn bodies_purged(&self, id: &str, now: Millis) -> Result<(), StoreError> {
        sqlx::query("UPDATE campaigns SET bodies_purged_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn record_feedback(&self, e: &feedback::Event, now: Millis) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let new = sqlx::query(
            "INSERT INTO feedback (event_key, provider, event, email, campaign_id, recipient_id, detail, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_key) DO NOTHING",
        )
        .bind(&e.key)
        .bind(e.provider)
        .bind(e.kind.as_str())
        .bind(&e.email)
        .bind(&e.campaign_id)
        .bind(e.recipient_id)
        .bind(&e.detail)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if new && e.kind.suppresses() {
            let reason = format!("{} ({})", e.kind.as_str(), e.provider);
            sqlx::query(
                "INSERT INTO suppressions (email, reason, source, created_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (email) DO NOTHING",
            )
            .bind(sender::safety::canonical(&e.email))
            .bind(&reason)
            .bind(e.campaign_id.as_deref().unwrap_or(""))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // Whoever is still waiting to be mailed at this address, in any campaign, is not.
            let mut tally = Tally::default();
            for from in [
                RecipientState::Pending,
                RecipientState::Rendered,
                RecipientState::Deferred,
            ] {
                let rows = sqlx::query(
                    "UPDATE recipients SET state = 'suppressed', reason = $1, updated_ms = $2 \
                     WHERE email_key = $3 AND state = $4 RETURNING campaign_id, batch, email_key",
                )
                .bind(format!("suppressed: {reason}"))
                .bind(now)
                .bind(sender::safety::canonical(&e.email))
                .bind(from.as_str())
                .fetch_all(&mut *tx)
                .await?;
                for row in &rows {
                    let cid: String = row.get("campaign_id");
                    tally.moved_rows(
                        &cid,
                        std::slice::from_ref(row),
                        from,
                        RecipientState::Suppressed,
                    );
                }
            }
            tally.apply(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn spend_token(
        &self,
        key: &str,
        now: Millis,
        forget_before: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM webhook_tokens WHERE seen_ms < $1")
            .bind(forget_before)
            .execute(&mut *tx)
            .await?;
        let first = sqlx::query(
            "INSERT INTO webhook_tokens (token, seen_ms) VALUES ($1, $2) ON CONFLICT (token) DO NOTHING",
        )
        .bind(key)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(first)
    }

    async fn recipients(
        &self,
        id: &str,
        state: Option<RecipientState>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<RecipientRow>, StoreError> {
        let c = self.campaign(id).await?; // 404 for an unknown campaign, not an empty page
                                          // Ids grow with batches, so (state, batch, id) order is id order: one state's page is read
                                          // from the state index, however few of the campaign's recipients are in it.
        let batch = after.max(0) / i64::from(c.batch_size.max(1));
        let cols = "id, email, name, state, reason, attempts, provider_id, updated_ms";
        let by_state = format!(
            "SELECT {cols} FROM recipients WHERE campaign_id = $1 AND state = $2 AND batch >= $3 \
             AND id > $4 ORDER BY batch, id LIMIT $5"
        );
        let all = format!(
            "SELECT {cols} FROM recipients WHERE campaign_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = match state {
            Some(state) => sqlx::query(&by_state)
                .bind(id)
                .bind(state.as_str())
                .bind(batch),
            None => sqlx::query(&all).bind(id),
        }
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                let state: String = r.get("state");
                Ok(RecipientRow {
                    id: r.get("id"),
                    email: r.get("email"),
                    name: r.get("name"),
                    state: RecipientState::parse(&state)
                        .ok_or_else(|| StoreError::Corrupt(format!("recipient state {state:?}")))?,
                    reason: r.get("reason"),
                    attempts: r.get("attempts"),
                    provider_id: r.get("provider_id"),
                    updated_at: rfc3339(r.get("updated_ms")),
                })
            })
            .collect()
    }

    async fn retry(
        &self,
        id: &str,
        states: &[RecipientState],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT status, bodies_purged_ms FROM campaigns WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let status = Status::parse(row.get("status"))?;
        if status == Status::Cancelled {
            return Err(StoreError::Conflict(format!(
                "campaign {id} is cancelled and cannot be retried"
            )));
        }
        if row.get::<Option<i64>, _>("bodies_purged_ms").is_some() {
            return Err(StoreError::Conflict(format!(
                "campaign {id}'s rendered bodies were deleted after its retention period"
            )));
        }
        let mut moved = 0u64;
        let from_states = RecipientState::RETRYABLE
            .into_iter()
            .filter(|s| states.contains(s));
        for from in from_states {
            // A chunk per transaction: the first chunk can be leased while the rest are moved.
            loop {
                let mut tx = self.write.begin().await?;
                let rows = sqlx::query(&format!(
                    "UPDATE recipients SET state = CASE WHEN EXISTS (SELECT 1 FROM batches b \
                     WHERE b.campaign_id = recipients.campaign_id AND b.n = recipients.batch AND b.rendered_ms IS NOT NULL) \
                     THEN 'rendered' ELSE 'pending' END, \
                     attempts = 0, reason = NULL, retry_at_ms = NULL, updated_ms = $1 \
                     WHERE {CHUNK_OF_STATE} RETURNING batch, email_key, state",
                ))
                .bind(now)
                .bind(id)
                .bind(from.as_str())
                .bind(SWEEP_CHUNK)
                .fetch_all(&mut *tx)
                .await?;
                let mut tally = Tally::default();
                for row in &rows {
                    let to: String = row.get("state");
                    let to = RecipientState::parse(&to)
                        .ok_or_else(|| StoreError::Corrupt(format!("recipient state {to:?}")))?;
                    tally.moved_rows(id, std::slice::from_ref(row), from, to);
                }
                tally.apply(&mut tx).await?;
                if !rows.is_empty() {
                    sqlx::query(
                        "UPDATE campaigns SET status = 'running', status_reason = NULL, completed_ms = NULL \
                         WHERE id = $1 AND status = 'completed'",
                    )
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                moved += rows.len() as u64;
                if (rows.len() as i64) < SWEEP_CHUNK {
                    break;
                }
            }
        }
        Ok(moved)
    }

    async fn lower_cap(&self, minute: Millis, cap: u32) -> Result<(), StoreError> {
        // Never below what is already granted: those tokens are out and may be spent.
        sqlx::query(
            "UPDATE minute_ledger SET cap = CASE WHEN granted > $1 THEN granted ELSE $2 END              WHERE scope = $3 AND minute_ms = $4 AND cap > $5",
        )
        .bind(i64::from(cap))
        .bind(i64::from(cap))
        .bind(Scope::Global.to_string())
        .bind(minute)
        .bind(i64::from(cap))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn take_test_tokens(
        &self,
        n: u32,
        cap: u32,
        now: Millis,
        margin_ms: i64,
    ) -> Result<Option<Millis>, StoreError> {
        let minute = sender::clock::minute_start(now);
        let mut tx = self.write.begin().await?;
        let mut scopes = vec![(Scope::Global, cap), (Scope::Test, cap)];
        let mut rows = self.ledger_rows(&mut tx, &mut scopes, minute).await?;
        // One grant spans at most a few seconds of the slot line; a slow cap needs several.
        let mut taken = 0;
        while taken < n {
            let input: Vec<_> = rows
                .iter()
                .zip(&scopes)
                .map(|(r, (_, c))| (Some(*r), *c))
                .collect();
            let (grant, next) = ledger::claim_all(&input, n - taken, now, margin_ms);
            if grant.tokens == 0 {
                // Not enough for all of them: the transaction takes nothing.
                return Ok(None);
            }
            taken += grant.tokens;
            rows = next;
        }
        for ((scope, _), row) in scopes.iter().zip(&rows) {
            sqlx::query("UPDATE minute_ledger SET granted = $1, next_slot_ms = $2 WHERE scope = $3 AND minute_ms = $4")
                .bind(i64::from(row.granted))
                .bind(row.next_slot)
                .bind(scope.to_string())
                .bind(minute)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(minute))
    }

    async fn settle_test_tokens(
        &self,
        minute: Millis,
        attempted: u32,
        sent: u32,
    ) -> Result<(), StoreError> {
        if attempted == 0 {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        for scope in [Scope::Global, Scope::Test] {
            sqlx::query("UPDATE minute_ledger SET used = used + $1, sent = sent + $2 WHERE scope = $3 AND minute_ms = $4")
                .bind(i64::from(attempted))
                .bind(i64::from(sent))
                .bind(scope.to_string())
                .bind(minute)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_engagement(&self, e: &engagement::Event) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let known: Option<i64> =
            sqlx::query_scalar("SELECT id FROM recipients WHERE campaign_id = $1 AND id = $2")
                .bind(&e.campaign_id)
                .bind(e.recipient_id)
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_none() {
            return Ok(false);
        }
        let (human, machine) = if e.machine { (0i64, 1i64) } else { (1, 0) };
        let humans: i64 = sqlx::query_scalar(
            "INSERT INTO engagement (campaign_id, recipient_id, kind, first_ms, last_ms, human, machine) \
             VALUES ($1, $2, $3, $4, $4, $5, $6) ON CONFLICT (campaign_id, recipient_id, kind) DO UPDATE SET \
             last_ms = excluded.last_ms, human = engagement.human + excluded.human, \
             machine = engagement.machine + excluded.machine RETURNING human",
        )
        .bind(&e.campaign_id)
        .bind(e.recipient_id)
        .bind(e.kind.as_str())
        .bind(e.at_ms)
        .bind(human)
        .bind(machine)
        .fetch_one(&mut *tx)
        .await?;
        let first = i64::from(human == 1 && humans == 1);
        let k = match e.kind {
            engagement::Kind::Open => "opens",
            engagement::Kind::Click => "clicks",
        };
        sqlx::query(&format!(
            "UPDATE campaigns SET {k}_unique = {k}_unique + $1, {k}_human = {k}_human + $2, \
             {k}_machine = {k}_machine + $3 WHERE id = $4"
        ))
        .bind(first)
        .bind(human)
        .bind(machine)
        .bind(&e.campaign_id)
        .execute(&mut *tx)
        .await?;
        if let (engagement::Kind::Click, Some(url)) = (e.kind, &e.url) {
            let seen: Option<i64> =
                sqlx::query_scalar("SELECT clicks FROM links WHERE campaign_id = $1 AND url = $2")
                    .bind(&e.campaign_id)
                    .bind(url)
                    .fetch_optional(&mut *tx)
                    .await?;
            // At most MAX_LINKS rows per campaign, so this count is bounded too.
            let room = seen.is_some() || {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM links WHERE campaign_id = $1")
                        .bind(&e.campaign_id)
                        .fetch_one(&mut *tx)
                        .await?;
                n < engagement::MAX_LINKS
            };
            if room {
                sqlx::query(
                    "INSERT INTO links (campaign_id, url, clicks, unique_clicks, machine) \
                     VALUES ($1, $2, 0, 0, 0) ON CONFLICT (campaign_id, url) DO NOTHING",
                )
                .bind(&e.campaign_id)
                .bind(url)
                .execute(&mut *tx)
                .await?;
                let new_clicker = human == 1
                    && sqlx::query(
                        "INSERT INTO link_clickers (campaign_id, url, recipient_id) VALUES ($1, $2, $3) \
                         ON CONFLICT (campaign_id, url, recipient_id) DO NOTHING",
                    )
                    .bind(&e.campaign_id)
                    .bind(url)
                    .bind(e.recipient_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                sqlx::query(
                    "UPDATE links SET clicks = clicks + $1, machine = machine + $2, \
                     unique_clicks = unique_clicks + $3 WHERE campaign_id = $4 AND url = $5",
                )
                .bind(human)
                .bind(machine)
                .bind(i64::from(new_clicker))
                .bind(&e.campaign_id)
                .bind(url)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn links(&self, id: &str, limit: u32) -> Result<Vec<engagement::LinkClicks>, StoreError> {
        let rows = sqlx::query(
            "SELECT url, clicks, unique_clicks, machine FROM links WHERE campaign_id = $1 \
             ORDER BY clicks DESC, unique_clicks DESC, url LIMIT $2",
        )
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| engagement::LinkClicks {
                url: r.get("url"),
                clicks: r.get("clicks"),
                unique: r.get("unique_clicks"),
                machine: r.get("machine"),
            })
            .collect())
    }

    async fn suppressed(&self, emails: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        if emails.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT email, reason FROM suppressions WHERE email IN ({})",
            placeholders(1, emails.len())
        );
        let mut q = sqlx::query(&sql);
        for e in emails {
            q = q.bind(e);
        }
        Ok(q.fetch_all(&self.read)
            .await?
            .into_iter()
            .map(|row| (row.get("email"), row.get("reason")))
            .collect())
    }

    async fn minutes(&self, scope: &Scope, since: Millis) -> Result<Vec<MinuteStats>, StoreError> {
        let rows = sqlx::query(
            "SELECT minute_ms, cap, granted, used, sent FROM minute_ledger WHERE scope = $1 AND minute_ms >= $2 ORDER BY minute_ms LIMIT 10080",
        )
        .bind(scope.to_string())
        .bind(sender::clock::minute_start(since))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(minute_stats).collect())
    }

    async fn minute_rows(&self, minute: Millis) -> Result<Vec<(Scope, MinuteStats)>, StoreError> {
        let rows = sqlx::query(
            "SELECT scope, minute_ms, cap, granted, used, sent FROM minute_ledger WHERE minute_ms = $1 ORDER BY scope LIMIT 10000",
        )
        .bind(minute)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let scope: String = r.get("scope");
                Scope::parse(&scope)
                    .map(|s| (s, minute_stats(r)))
                    .ok_or_else(|| StoreError::Corrupt(format!("ledger scope {scope:?}")))
            })
            .collect()
    }

    async fn set_limits(
        &self,
        id: &str,
        per_minute: Option<Option<u32>>,
        priority: Option<u32>,
        now: Millis,
    ) -> Result<Campaign, StoreError> {
        let before = self.campaign(id).await?;
        if matches!(before.status, Status::Completed | Status::Cancelled) {
            return Err(StoreError::Conflict(format!(
                "campaign {id} is {}: its limits no longer matter",
                before.status.as_str()
            )));
        }
        let mut audit = Vec::new();
        let mut note = |kind: &str, old: Option<String>, new: Option<String>| {
            audit.push(AuditEntry {
                at: rfc3339(now),
                scope: Scope::Campaign(id.to_string()).to_string(),
                kind: kind.into(),
                old,
                new,
                source: format!("PUT /v1/campaigns/{id}"),
            })
        };
        let mut tx = self.write.begin().await?;
        if let Some(cap) = per_minute {
            sqlx::query("UPDATE campaigns SET per_minute = $1 WHERE id = $2")
                .bind(cap.map(i64::from))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if cap != before.per_minute {
                let show = |c: Option<u32>| c.map(|c| c.to_string());
                note("cap", show(before.per_minute), show(cap));
            }
        }
        if let Some(p) = priority {
            sqlx::query("UPDATE campaigns SET priority = $1 WHERE id = $2")
                .bind(i64::from(p))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if p != before.priority {
                note(
                    "priority",
                    Some(before.priority.to_string()),
                    Some(p.to_string()),
                );
            }
        }
        Self::insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await?;
        self.campaign(id).await
    }

    async fn metrics_view(&self, current_minute: Millis) -> Result<super::StoreView, StoreError> {
        let count = |r: &AnyRow, k: &str| r.get::<i64, _>(k).max(0) as u64;
        let ledger = sqlx::query(
            "SELECT scope, CAST(sum(granted) AS BIGINT) AS granted, CAST(sum(forfeited) AS BIGINT) AS forfeited \
             FROM (SELECT scope, granted, \
                   CASE WHEN minute_ms < $1 AND granted > used THEN granted - used ELSE 0 END AS forfeited \
                   FROM minute_ledger \
                   UNION ALL SELECT scope, granted, forfeited FROM ledger_totals) AS history \
             GROUP BY scope ORDER BY scope",
        )
        .bind(current_minute)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| (r.get("scope"), count(r, "granted"), count(r, "forfeited")))
        .collect();
        let queue = sqlx::query(
            "SELECT k.state, CAST(sum(k.n) AS BIGINT) AS n FROM recipient_counts k \
             JOIN campaigns c ON c.id = k.campaign_id WHERE c.status = 'running' AND k.n > 0 \
             GROUP BY k.state ORDER BY k.state",
        )
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| (r.get("state"), count(r, "n")))
        .collect();
        let campaigns = sqlx::query(
            "SELECT status, count(*) AS n FROM campaigns WHERE status <> 'discarded' GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| (r.get("status"), count(r, "n")))
        .collect();
        let week_ago = current_minute - 7 * 24 * 3_600_000;
        let engagement = sqlx::query(
            "SELECT * FROM campaigns WHERE (track_opens <> 0 OR track_clicks <> 0) \
             AND (status IN ('running', 'paused') OR completed_ms >= $1) ORDER BY id LIMIT 1000",
        )
        .bind(week_ago)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| (r.get("id"), engagement_of(r)))
        .collect();
        Ok(super::StoreView {
            ledger,
            queue,
            campaigns,
            engagement,
        })
    }

    async fn running(&self) -> Result<Vec<Running>, StoreError> {
        sqlx::query(RUNNING)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(running_row)
            .collect()
    }

    async fn open_by_domain(&self, id: &str, domains: &[String]) -> Result<Vec<i64>, StoreError> {
        let mut out = Vec::with_capacity(domains.len());
        for d in domains {
            let n: Option<i64> = sqlx::query_scalar(
                "SELECT open FROM domain_counts WHERE campaign_id = $1 AND domain = $2",
            )
            .bind(id)
            .bind(sender::safety::canonical_domain(d))
            .fetch_optional(&self.read)
            .await?;
            out.push(n.unwrap_or(0).max(0));
        }
        Ok(out)
    }

    async fn record_audit(&self, entries: &[AuditEntry], now: Millis) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        Self::insert_audit(&mut tx, entries, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_ms, scope, kind, old, new, source FROM governor_audit ORDER BY at_ms DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEntry {
                at: rfc3339(r.get("at_ms")),
                scope: r.get("scope"),
                kind: r.get("kind"),
                old: r.get("old"),
                new: r.get("new"),
                source: r.get("source"),
            })
            .collect())
    }
}
