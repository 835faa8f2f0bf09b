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
use sender::{LeaseReply, Millis, Outcome, RecipientOutcome, SendLease};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use super::{
    rfc3339, Action, AuditEntry, Campaign, Counts, LeaseRules, MinuteStats, RecipientRow,
    ReportRules, Running, Status, Store, StoreError, RETRYABLE,
};
use crate::fair::Fair;
use crate::feedback;
use crate::ledger::{self, MinuteRow};
use crate::planner;
use crate::retry::retry_delay_ms;
use crate::validate::ValidCampaign;

const GLOBAL: &str = "global";

/// Recipients one lease could take, and the capped domain they are all in (if any).
struct Pick {
    batch: i64,
    ids: Vec<i64>,
    emails: Vec<String>,
    domain: Option<(String, u32)>,
}

/// Times a batch is rendered again because its senders could not read it.
const MAX_RERENDERS: i64 = 3;

const RUNNING: &str = "SELECT id, priority, per_minute, send_at_ms, window_json FROM campaigns \
     WHERE status = 'running' ORDER BY created_ms, id";

fn running_row(row: &AnyRow) -> Result<Running, StoreError> {
    Ok(Running {
        id: row.get("id"),
        priority: row.get::<i64, _>("priority").clamp(1, 1_000) as u32,
        per_minute: row
            .get::<Option<i64>, _>("per_minute")
            .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
        send_at_ms: row.get("send_at_ms"),
        window: row
            .get::<Option<String>, _>("window_json")
            .map(|w| json(&w))
            .transpose()?,
    })
}
/// States from which a recipient may still be sent.
const OPEN_STATES: &str = "('pending', 'rendered', 'leased', 'deferred')";

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

    /// Inserts recipients from a JSON array (`$3`) of `{id, batch, email, name, data}` for campaign `$1`
    /// at time `$2`.
    fn insert_recipients(self) -> &'static str {
        match self {
            Backend::Sqlite => {
                "INSERT INTO recipients (campaign_id, id, batch, email, email_key, name, data, state, updated_ms) \
                 SELECT $1, json_extract(r.value, '$.id'), json_extract(r.value, '$.batch'), \
                 json_extract(r.value, '$.email'), json_extract(r.value, '$.key'), json_extract(r.value, '$.name'), \
                 json_extract(r.value, '$.data'), 'pending', $2 FROM json_each($3) AS r"
            }
            Backend::Postgres => {
                "INSERT INTO recipients (campaign_id, id, batch, email, email_key, name, data, state, updated_ms) \
                 SELECT $1, (r->>'id')::bigint, (r->>'batch')::bigint, r->>'email', r->>'key', r->>'name', \
                 r->>'data', 'pending', $2 FROM jsonb_array_elements($3::jsonb) AS r"
            }
        }
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

    async fn counts(&self, id: &str) -> Result<(Counts, u32, u32), StoreError> {
        let mut c = Counts::default();
        let rows = sqlx::query(
            "SELECT state, count(*) AS n FROM recipients WHERE campaign_id = $1 GROUP BY state",
        )
        .bind(id)
        .fetch_all(&self.read)
        .await?;
        for row in rows {
            let n: i64 = row.get("n");
            c.total += n;
            match row.get::<&str, _>("state") {
                "pending" | "rendered" => c.pending += n,
                "leased" => {
                    c.pending += n;
                    c.in_flight += n
                }
                "deferred" => {
                    c.pending += n;
                    c.deferred += n
                }
                "sent" => c.sent += n,
                "failed" => c.failed += n,
                "unknown" => c.unknown += n,
                "suppressed" => c.suppressed += n,
                "cancelled" => c.cancelled += n,
                other => return Err(StoreError::Corrupt(format!("recipient state {other:?}"))),
            }
        }
        let b = sqlx::query(
            "SELECT count(*) AS batches, count(rendered_ms) AS done, \
             CAST(coalesce(sum(CASE WHEN rendered_ms IS NOT NULL THEN size ELSE 0 END), 0) AS BIGINT) AS rendered \
             FROM batches WHERE campaign_id = $1",
        )
        .bind(id)
        .fetch_one(&self.read)
        .await?;
        c.rendered = b.get("rendered");
        Ok((
            c,
            b.get::<i64, _>("batches") as u32,
            b.get::<i64, _>("done") as u32,
        ))
    }

    async fn load(&self, row: AnyRow) -> Result<Campaign, StoreError> {
        let id: String = row.get("id");
        let (mut counts, batches, batches_rendered) = self.counts(&id).await?;
        counts.requests = row.get("requests");
        let from: Mailbox = json(row.get("from_json"))?;
        let reply_to: Option<Mailbox> = row
            .get::<Option<String>, _>("reply_to_json")
            .map(|j| json(&j))
            .transpose()?;
        Ok(Campaign {
            id,
            name: row.get("name"),
            status: Status::parse(row.get("status"))?,
            status_reason: row.get("status_reason"),
            from: from.to_string(),
            reply_to: reply_to.map(|r| r.to_string()),
            template: row.get("template_name"),
            batch_size: row.get::<i64, _>("batch_size") as u32,
            batches,
            batches_rendered,
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
        })
    }

    /// Up to `want` sendable recipients of one batch of a campaign: the lowest batch with any that no
    /// other conductor holds right now (on PostgreSQL they are locked until the transaction ends), all
    /// in one domain group — one capped domain, or every domain without a cap — so a lease draws on
    /// one domain scope at most. Recipients of domains whose cap is spent this minute (`full`) are
    /// passed over, so one throttled domain does not stall the others.
    async fn sendable(
        &self,
        tx: &mut Transaction<'_, Any>,
        campaign_id: &str,
        r: &LeaseRules,
        full: &[String],
    ) -> Result<Option<Pick>, StoreError> {
        let skip: String = (0..full.len())
            .map(|k| format!(" AND lower(email) NOT LIKE ${}", 4 + k))
            .collect();
        let patterns: Vec<String> = full.iter().map(|d| format!("%@{d}")).collect();
        let mut after = -1i64;
        // A handful of batches is plenty: rows are locked only for the instant a lease is granted.
        for _ in 0..8 {
            let sql = format!(
                "SELECT min(batch) FROM recipients WHERE campaign_id = $1 AND batch > $2 \
                 AND (state = 'rendered' OR (state = 'deferred' AND retry_at_ms <= $3)){skip}"
            );
            let mut q = sqlx::query_scalar(&sql)
                .bind(campaign_id)
                .bind(after)
                .bind(r.now);
            for p in &patterns {
                q = q.bind(p);
            }
            let batch: Option<i64> = q.fetch_one(&mut **tx).await?;
            let Some(batch) = batch else {
                return Ok(None);
            };
            let sql = format!(
                "SELECT id, email FROM recipients WHERE campaign_id = $1 AND batch = $2 \
                 AND (state = 'rendered' OR (state = 'deferred' AND retry_at_ms <= $3)){skip} \
                 ORDER BY id LIMIT ${}{}",
                4 + patterns.len(),
                self.backend.skip_locked("recipients")
            );
            let mut q = sqlx::query(&sql).bind(campaign_id).bind(batch).bind(r.now);
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
            let mut ids = Vec::with_capacity(rows.len());
            let mut emails = Vec::with_capacity(rows.len());
            for (k, row) in rows.iter().enumerate() {
                let email: String = row.get("email");
                let group = group_of(&email);
                if k == 0 {
                    domain = group;
                } else if group != domain {
                    continue;
                }
                ids.push(row.get::<i64, _>("id"));
                emails.push(email);
            }
            if !ids.is_empty() {
                return Ok(Some(Pick {
                    batch,
                    ids,
                    emails,
                    domain,
                }));
            }
            after = batch;
        }
        Ok(None)
    }

    /// A lease's batch could not be read by its sender. Bodies are derived from what the store holds,
    /// so the batch is rendered again: its waiting recipients go back to `pending` and the batch is
    /// handed out for rendering. After [`MAX_RERENDERS`] such reports the recipients fail with the
    /// reason instead, so a body that can never be read cannot cost tokens forever.
    async fn render_again(
        tx: &mut Transaction<'_, Any>,
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
        // Another sender's lease of the same batch is left alone: its report is still to come.
        let waiting = "campaign_id = $3 AND batch = $4 \
                       AND (state IN ('rendered', 'deferred') OR (state = 'leased' AND lease_id = $5))";
        let give_up = rerenders > MAX_RERENDERS;
        let (state, why) = if give_up {
            tracing::warn!(campaign = cid, batch, %reason, "rendered batch still unreadable: its recipients fail");
            (
                "failed",
                format!("the rendered message could not be read after {MAX_RERENDERS} renders: {reason}"),
            )
        } else {
            tracing::warn!(campaign = cid, batch, %reason, "rendered batch unreadable: rendering it again");
            ("pending", format!("rendering again: {reason}"))
        };
        sqlx::query(&format!(
            "UPDATE recipients SET state = $6, reason = $1, lease_id = NULL, updated_ms = $2 WHERE {waiting}"
        ))
        .bind(why)
        .bind(now)
        .bind(cid)
        .bind(batch)
        .bind(lease_id)
        .bind(state)
        .execute(&mut **tx)
        .await?;
        if give_up {
            return Ok(());
        }
        sqlx::query(
            "UPDATE batches SET rendered_ms = NULL, body_key = NULL, dispatched_ms = NULL, render_claim_ms = NULL \
             WHERE campaign_id = $1 AND n = $2",
        )
        .bind(cid)
        .bind(batch)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// [`Self::sendable`], less whoever may not be mailed now: an address on the suppression list
    /// (marked `suppressed`) or, in sandbox mode, outside what `[safety]` allows (marked `failed`).
    /// Every send of every path (first send, a deferral come due, a retry on request) is leased
    /// here, so this is the one place the rule is applied. Costs one indexed lookup per lease.
    async fn mailable(
        &self,
        tx: &mut Transaction<'_, Any>,
        campaign_id: &str,
        r: &LeaseRules,
        full: &[String],
    ) -> Result<Option<Pick>, StoreError> {
        // A pick wholly refused is looked past, a few times; the rest wait for the next lease.
        for _ in 0..4 {
            let Some(mut pick) = self.sendable(tx, campaign_id, r, full).await? else {
                return Ok(None);
            };
            let keys: Vec<String> = pick
                .emails
                .iter()
                .map(|e| sender::safety::canonical(e))
                .collect();
            let sql = format!(
                "SELECT email, reason FROM suppressions WHERE email IN ({})",
                placeholders(1, keys.len())
            );
            let mut q = sqlx::query(&sql);
            for k in &keys {
                q = q.bind(k);
            }
            let suppressed: std::collections::HashMap<String, String> = q
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(|row| (row.get("email"), row.get("reason")))
                .collect();
            let mut refused: Vec<(i64, &'static str, String)> = Vec::new();
            let mut kept = (Vec::new(), Vec::new());
            for ((id, email), key) in pick.ids.iter().zip(&pick.emails).zip(&keys) {
                if let Some(why) = suppressed.get(key) {
                    refused.push((*id, "suppressed", format!("suppressed: {why}")));
                } else if !r.safety.allows(email) {
                    refused.push((*id, "failed", sender::safety::refusal(email)));
                } else {
                    kept.0.push(*id);
                    kept.1.push(email.clone());
                }
            }
            for (id, state, reason) in &refused {
                sqlx::query(
                    "UPDATE recipients SET state = $1, reason = $2, lease_id = NULL, updated_ms = $3 \
                     WHERE campaign_id = $4 AND id = $5",
                )
                .bind(*state)
                .bind(reason)
                .bind(r.now)
                .bind(campaign_id)
                .bind(*id)
                .execute(&mut **tx)
                .await?;
            }
            if !refused.is_empty() {
                tracing::info!(
                    campaign = campaign_id,
                    refused = refused.len(),
                    "recipients not mailed: suppressed or outside the sandbox"
                );
            }
            (pick.ids, pick.emails) = kept;
            if !pick.ids.is_empty() {
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
        scopes: &mut [(String, u32)],
        minute: Millis,
    ) -> Result<Vec<MinuteRow>, StoreError> {
        scopes.sort();
        let mut rows = Vec::with_capacity(scopes.len());
        for (scope, cap) in scopes.iter() {
            sqlx::query(
                "INSERT INTO minute_ledger (scope, minute_ms, cap, granted, next_slot_ms) VALUES ($1, $2, $3, 0, $2) \
                 ON CONFLICT (scope, minute_ms) DO NOTHING",
            )
            .bind(scope)
            .bind(minute)
            .bind(i64::from(*cap))
            .execute(&mut **tx)
            .await?;
            let row = sqlx::query(&format!(
                "SELECT minute_ms, cap, granted, next_slot_ms FROM minute_ledger WHERE scope = $1 AND minute_ms = $2{}",
                self.backend.for_update()
            ))
            .bind(scope)
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

    /// Where a recipient goes when it was not sent and may be again: back to the queue, unless its
    /// campaign was cancelled meanwhile.
    async fn back_state(
        tx: &mut Transaction<'_, Any>,
        campaign_id: &str,
    ) -> Result<&'static str, StoreError> {
        let status: String = sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1")
            .bind(campaign_id)
            .fetch_one(&mut **tx)
            .await?;
        Ok(if status == "cancelled" {
            "cancelled"
        } else {
            "rendered"
        })
    }
}

impl SqlStore {
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

/// `$from, $from+1, …`: `n` numbered placeholders.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|k| format!("${k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($1, $2, $3), ($4, $5, $6), …`: `rows` tuples of `cols` numbered placeholders.
fn values(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(r * cols + 1, cols)))
        .collect::<Vec<_>>()
        .join(", ")
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
    async fn create_campaign(
        &self,
        c: &ValidCampaign,
        batch_size: u32,
        now: Millis,
    ) -> Result<Campaign, StoreError> {
        let id = format!("c{}", uuid::Uuid::now_v7().simple());
        let plan = planner::plan(c.recipients.len(), batch_size);
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO campaigns (id, name, from_json, reply_to_json, template_name, template_json, status, \
             batch_size, total, duplicates, created_ms, per_minute, priority, send_at_ms, window_json) \
             VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&id)
        .bind(&c.name)
        .bind(to_json(&c.from))
        .bind(c.reply_to.as_ref().map(to_json))
        .bind(&c.template_name)
        .bind(to_json(&c.template))
        .bind(i64::from(batch_size))
        .bind(c.recipients.len() as i64)
        .bind(c.duplicates as i64)
        .bind(now)
        .bind(c.limits.per_minute.map(i64::from))
        .bind(i64::from(c.limits.priority))
        .bind(c.limits.send_at_ms)
        .bind(c.limits.window.as_ref().map(to_json))
        .execute(&mut *tx)
        .await?;
        for chunk in plan.chunks(1000) {
            let sql = format!(
                "INSERT INTO batches (campaign_id, n, size) VALUES {}",
                values(chunk.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for p in chunk {
                q = q.bind(&id).bind(i64::from(p.n)).bind(i64::from(p.len));
            }
            q.execute(&mut *tx).await?;
        }
        // One JSON array per chunk, expanded by the database: thousands of bound values per statement
        // cost far more than one large string.
        for chunk in c.recipients.chunks(5000) {
            let rows: Vec<serde_json::Value> = chunk
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "id": r.id,
                        "batch": planner::batch_of(r.id, batch_size),
                        "email": r.email,
                        "key": sender::safety::canonical(&r.email),
                        "name": r.name,
                        "data": to_json(&r.data),
                    })
                })
                .collect();
            sqlx::query(self.backend.insert_recipients())
                .bind(&id)
                .bind(now)
                .bind(to_json(&rows))
                .execute(&mut *tx)
                .await?;
        }
        // Addresses that bounced hard, complained or unsubscribed are kept, counted, never mailed.
        sqlx::query(
            "UPDATE recipients SET state = 'suppressed', reason = 'on the suppression list' \
             WHERE campaign_id = $1 AND email_key IN (SELECT email FROM suppressions)",
        )
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.campaign(&id).await
    }

    async fn campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM campaigns ORDER BY created_ms DESC, id DESC LIMIT 500")
                .fetch_all(&self.read)
                .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.load(row).await?);
        }
        Ok(out)
    }

    async fn campaign(&self, id: &str) -> Result<Campaign, StoreError> {
        let row = sqlx::query("SELECT * FROM campaigns WHERE id = $1")
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
            (Action::Cancel, Running | Paused | Cancelled) => Cancelled,
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
        if next == Cancelled {
            // In-flight recipients finish their send; their reports land them in a final state.
            sqlx::query(
                "UPDATE recipients SET state = 'cancelled', updated_ms = $1 \
                 WHERE campaign_id = $2 AND state IN ('pending', 'rendered', 'deferred')",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((self.campaign(id).await?, next != status))
    }

    async fn batches_to_render(
        &self,
        stale_before: Millis,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<RenderJob>, StoreError> {
        let mut tx = self.write.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT b.campaign_id, b.n FROM batches b JOIN campaigns c ON c.id = b.campaign_id \
             WHERE b.rendered_ms IS NULL AND c.status IN ('running', 'paused') \
             AND (b.dispatched_ms IS NULL OR b.dispatched_ms < $1) \
             ORDER BY c.created_ms, b.n LIMIT $2{}",
            self.backend.skip_locked("b")
        ))
        .bind(stale_before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let job = RenderJob {
                campaign_id: row.get("campaign_id"),
                batch: row.get::<i64, _>("n") as u32,
            };
            sqlx::query("UPDATE batches SET dispatched_ms = $1 WHERE campaign_id = $2 AND n = $3")
                .bind(now)
                .bind(&job.campaign_id)
                .bind(i64::from(job.batch))
                .execute(&mut *tx)
                .await?;
            jobs.push(job);
        }
        tx.commit().await?;
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
        let c = sqlx::query(
            "SELECT from_json, reply_to_json, template_json FROM campaigns WHERE id = $1",
        )
        .bind(&job.campaign_id)
        .fetch_one(&self.read)
        .await?;
        let rows = sqlx::query("SELECT id, email, name, data FROM recipients WHERE campaign_id = $1 AND batch = $2 ORDER BY id")
            .bind(&job.campaign_id)
            .bind(i64::from(job.batch))
            .fetch_all(&self.read)
            .await?;
        let recipients = rows
            .into_iter()
            .map(|r| {
                Ok(RecipientData {
                    id: r.get("id"),
                    email: r.get("email"),
                    name: r.get("name"),
                    data: json(r.get("data"))?,
                    unsubscribe: None,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let template: TemplateSource = json(c.get("template_json"))?;
        Ok(Some(RenderInput {
            from: json(c.get("from_json"))?,
            reply_to: c
                .get::<Option<String>, _>("reply_to_json")
                .map(|j| json(&j))
                .transpose()?,
            template,
            recipients,
            limits: Default::default(),
        }))
    }

    async fn batch_rendered(
        &self,
        job: &RenderJob,
        key: &str,
        failed: &[(i64, String)],
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let first = sqlx::query("UPDATE batches SET body_key = $1, rendered_ms = $2 WHERE campaign_id = $3 AND n = $4 AND rendered_ms IS NULL")
            .bind(key)
            .bind(now)
            .bind(&job.campaign_id)
            .bind(i64::from(job.batch))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if first == 0 {
            return Ok(()); // rendered twice: the same bytes, already recorded
        }
        for (id, reason) in failed {
            sqlx::query("UPDATE recipients SET state = 'failed', reason = $1, updated_ms = $2 WHERE campaign_id = $3 AND id = $4 AND state = 'pending'")
                .bind(format!("render: {reason}"))
                .bind(now)
                .bind(&job.campaign_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE recipients SET state = 'rendered', updated_ms = $1 WHERE campaign_id = $2 AND batch = $3 AND state = 'pending'")
            .bind(now)
            .bind(&job.campaign_id)
            .bind(i64::from(job.batch))
            .execute(&mut *tx)
            .await?;
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
        .filter_map(|s: String| s.strip_prefix("domain:").map(str::to_string))
        .collect();
        let mut blocked = false;
        for cid in &order {
            let Some(pick) = self.mailable(&mut tx, cid, &r, &full).await? else {
                continue;
            };
            let own = runnable
                .iter()
                .find(|c| &c.id == cid)
                .and_then(|c| c.per_minute);
            let mut scopes = vec![(GLOBAL.to_string(), r.cap)];
            if let Some(cap) = own {
                scopes.push((format!("campaign:{cid}"), cap));
            }
            if let Some((d, cap)) = &pick.domain {
                scopes.push((format!("domain:{d}"), *cap));
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
                ledger::claim_all(&input, pick.ids.len() as u32, r.now, r.margin_ms);
            if grant.tokens == 0 {
                let global = rows[scopes.iter().position(|(s, _)| s == GLOBAL).unwrap_or(0)];
                if global.granted >= global.cap || r.now >= grant.deadline {
                    // The account's budget is spent: nobody gets anything before the next minute.
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
                    .bind(scope)
                    .bind(row.minute)
                    .execute(&mut *tx)
                    .await?;
            }

            let ids = &pick.ids[..grant.tokens as usize];
            let lease_id = uuid::Uuid::new_v4().simple().to_string();
            let sql = format!(
                "UPDATE recipients SET state = 'leased', lease_id = $1, updated_ms = $2 \
                 WHERE campaign_id = $3 AND id IN ({})",
                placeholders(4, ids.len())
            );
            let mut q = sqlx::query(&sql).bind(&lease_id).bind(r.now).bind(cid);
            for id in ids {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
            let scope_names: Vec<&str> = scopes.iter().map(|(s, _)| s.as_str()).collect();
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
                recipients: ids.to_vec(),
                minute: grant.minute,
                first_at: grant.first_at,
                spacing_us: grant.spacing_us,
                deadline: grant.spend_by,
            }));
        }
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
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.write.begin().await?;
        let lease = sqlx::query(&format!(
            "SELECT campaign_id, minute_ms, scopes FROM leases WHERE id = $1 AND closed_ms IS NULL{}",
            self.backend.for_update()
        ))
        .bind(lease_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::LeaseLost(lease_id.to_string()))?;
        let cid: String = lease.get("campaign_id");
        let minute: i64 = lease.get("minute_ms");
        // Leases from before scopes were recorded drew on the global scope alone.
        let scopes: Vec<String> = match lease.get::<Option<String>, _>("scopes") {
            Some(s) => json(&s)?,
            None => vec![GLOBAL.to_string()],
        };
        sqlx::query("UPDATE leases SET heard_ms = $1 WHERE id = $2")
            .bind(r.now)
            .bind(lease_id)
            .execute(&mut *tx)
            .await?;
        let back = Self::back_state(&mut tx, &cid).await?;
        let (mut used, mut sent) = (0i64, 0i64);
        let mut stopped = None;
        let mut unreadable = None;
        for o in outcomes {
            // A token was spent if a request was made; a released recipient spent none.
            let counted = o.outcome.attempted();
            // `on_ambiguous = "resend"`: a send in doubt is tried again like a deferred one.
            let resent;
            let outcome = match &o.outcome {
                Outcome::Unknown { reason } if r.resend_ambiguous => {
                    resent = Outcome::Deferred {
                        reason: format!("in doubt, sent again (on_ambiguous = resend): {reason}"),
                        retry_after_ms: None,
                    };
                    &resent
                }
                other => other,
            };
            let (state, reason, provider_id, retry_at) = match outcome {
                Outcome::Sent { provider_id } => ("sent", None, provider_id.clone(), None),
                Outcome::Failed { reason } => ("failed", Some(reason.clone()), None, None),
                Outcome::Unknown { reason } => ("unknown", Some(reason.clone()), None, None),
                Outcome::Deferred {
                    reason,
                    retry_after_ms,
                }
                | Outcome::Throttled {
                    reason,
                    retry_after_ms,
                } => {
                    let attempts: Option<i64> = sqlx::query_scalar(
                        "SELECT attempts FROM recipients WHERE campaign_id = $1 AND id = $2 AND lease_id = $3 AND state = 'leased'",
                    )
                    .bind(&cid)
                    .bind(o.recipient_id)
                    .bind(lease_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let attempts = attempts.unwrap_or(0) as u32 + 1;
                    if attempts >= r.max_attempts {
                        (
                            "failed",
                            Some(format!("gave up after {attempts} attempts; last: {reason}")),
                            None,
                            None,
                        )
                    } else if back == "cancelled" {
                        ("cancelled", Some(reason.clone()), None, None)
                    } else {
                        let delay =
                            retry_delay_ms(attempts, *retry_after_ms, rand::random::<f64>());
                        ("deferred", Some(reason.clone()), None, Some(r.now + delay))
                    }
                }
                Outcome::AccountStop { reason } => {
                    let paused = sqlx::query("UPDATE campaigns SET status = 'paused', status_reason = $1 WHERE id = $2 AND status = 'running'")
                        .bind(format!("provider refused the account: {reason}"))
                        .bind(&cid)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if paused > 0 {
                        stopped = Some(cid.clone());
                    }
                    (back, Some(reason.clone()), None, None)
                }
                Outcome::Released => (back, None, None, None),
                Outcome::Unreadable { reason } => {
                    unreadable = Some(reason.clone());
                    (back, None, None, None)
                }
            };
            let changed = sqlx::query(
                "UPDATE recipients SET state = $1, reason = $2, provider_id = coalesce($3, provider_id), retry_at_ms = $4, \
                 attempts = attempts + $5, lease_id = NULL, updated_ms = $6 \
                 WHERE campaign_id = $7 AND id = $8 AND lease_id = $9 AND state = 'leased'",
            )
            .bind(state)
            .bind(reason)
            .bind(provider_id)
            .bind(retry_at)
            .bind(i64::from(counted))
            .bind(r.now)
            .bind(&cid)
            .bind(o.recipient_id)
            .bind(lease_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 1 && counted {
                used += 1;
                sent += i64::from(state == "sent");
            }
        }
        if used > 0 {
            sqlx::query("UPDATE campaigns SET requests = requests + $1 WHERE id = $2")
                .bind(used)
                .bind(&cid)
                .execute(&mut *tx)
                .await?;
            for scope in &scopes {
                sqlx::query("UPDATE minute_ledger SET used = used + $1, sent = sent + $2 WHERE scope = $3 AND minute_ms = $4")
                    .bind(used)
                    .bind(sent)
                    .bind(scope)
                    .bind(minute)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if let Some(reason) = unreadable {
            Self::render_again(&mut tx, &cid, lease_id, &reason, r.now).await?;
        }
        if last {
            sqlx::query("UPDATE recipients SET state = $1, lease_id = NULL, updated_ms = $2 WHERE lease_id = $3 AND state = 'leased'")
                .bind(back)
                .bind(r.now)
                .bind(lease_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE leases SET closed_ms = $1 WHERE id = $2")
                .bind(r.now)
                .bind(lease_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(stopped)
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
            let back = Self::back_state(&mut tx, &campaign).await?;
            let (doubt_state, doubt_reason) = if resend_ambiguous && back != "cancelled" {
                (
                    back,
                    "sender fell silent; this send may have started and is sent again (on_ambiguous = resend)",
                )
            } else {
                ("unknown", "sender fell silent; this send may have started")
            };
            for (ids, state, reason, doubt) in [
                (&in_doubt, doubt_state, Some(doubt_reason), true),
                (&never_started, back, None, false),
            ] {
                for chunk in ids.chunks(500) {
                    let sql = format!(
                        "UPDATE recipients SET state = $1, reason = $2, lease_id = NULL, updated_ms = $3 \
                         WHERE lease_id = $4 AND state = 'leased' AND id IN ({})",
                        placeholders(5, chunk.len())
                    );
                    let mut q = sqlx::query(&sql)
                        .bind(state)
                        .bind(reason)
                        .bind(now)
                        .bind(&id);
                    for rid in chunk {
                        q = q.bind(*rid);
                    }
                    let n = q.execute(&mut *tx).await?.rows_affected();
                    if doubt {
                        lost += n;
                    }
                }
            }
            sqlx::query("UPDATE leases SET closed_ms = $1 WHERE id = $2")
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(lost)
    }

    async fn complete_finished(&self, now: Millis) -> Result<Vec<String>, StoreError> {
        let candidates: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT c.id FROM campaigns c WHERE c.status = 'running' AND NOT EXISTS \
             (SELECT 1 FROM recipients r WHERE r.campaign_id = c.id AND r.state IN {OPEN_STATES})"
        ))
        .fetch_all(&self.read)
        .await?;
        let mut done = Vec::with_capacity(candidates.len());
        for id in candidates {
            // Conditional, so that of several conductors exactly one completes it (and says so).
            let changed = sqlx::query(&format!(
                "UPDATE campaigns SET status = 'completed', completed_ms = $1 WHERE id = $2 AND status = 'running' \
                 AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.campaign_id = $3 AND r.state IN {OPEN_STATES})"
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
             AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.campaign_id = c.id AND r.state = 'leased') \
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
            sqlx::query(
                "UPDATE recipients SET state = 'suppressed', reason = $1, updated_ms = $2 \
                 WHERE email_key = $3 AND state IN ('pending', 'rendered', 'deferred')",
            )
            .bind(format!("suppressed: {reason}"))
            .bind(now)
            .bind(sender::safety::canonical(&e.email))
            .execute(&mut *tx)
            .await?;
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
        state: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<RecipientRow>, StoreError> {
        self.campaign(id).await?; // 404 for an unknown campaign, not an empty page
        let rows = sqlx::query(
            "SELECT id, email, name, state, reason, attempts, provider_id, updated_ms FROM recipients \
             WHERE campaign_id = $1 AND ($2 = '' OR state = $3) AND id > $4 ORDER BY id LIMIT $5",
        )
        .bind(id)
        .bind(state.unwrap_or(""))
        .bind(state.unwrap_or(""))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RecipientRow {
                id: r.get("id"),
                email: r.get("email"),
                name: r.get("name"),
                state: r.get("state"),
                reason: r.get("reason"),
                attempts: r.get("attempts"),
                provider_id: r.get("provider_id"),
                updated_at: rfc3339(r.get("updated_ms")),
            })
            .collect())
    }

    async fn retry(&self, id: &str, states: &[String], now: Millis) -> Result<u64, StoreError> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query("SELECT status, bodies_purged_ms FROM campaigns WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
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
        let mut moved = 0;
        for state in states.iter().filter(|s| RETRYABLE.contains(&s.as_str())) {
            moved += sqlx::query(
                "UPDATE recipients SET state = CASE WHEN EXISTS (SELECT 1 FROM batches b WHERE b.campaign_id = recipients.campaign_id \
                 AND b.n = recipients.batch AND b.rendered_ms IS NOT NULL) THEN 'rendered' ELSE 'pending' END, \
                 attempts = 0, reason = NULL, retry_at_ms = NULL, updated_ms = $1 WHERE campaign_id = $2 AND state = $3",
            )
            .bind(now)
            .bind(id)
            .bind(state)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if moved > 0 {
            sqlx::query(
                "UPDATE campaigns SET status = 'running', status_reason = NULL, completed_ms = NULL WHERE id = $1 AND status = 'completed'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn lower_cap(&self, minute: Millis, cap: u32) -> Result<(), StoreError> {
        // Never below what is already granted: those tokens are out and may be spent.
        sqlx::query(
            "UPDATE minute_ledger SET cap = CASE WHEN granted > $1 THEN granted ELSE $2 END              WHERE scope = $3 AND minute_ms = $4 AND cap > $5",
        )
        .bind(i64::from(cap))
        .bind(i64::from(cap))
        .bind(GLOBAL)
        .bind(minute)
        .bind(i64::from(cap))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn minutes(&self, scope: &str, since: Millis) -> Result<Vec<MinuteStats>, StoreError> {
        let rows = sqlx::query(
            "SELECT minute_ms, cap, granted, used, sent FROM minute_ledger WHERE scope = $1 AND minute_ms >= $2 ORDER BY minute_ms LIMIT 10080",
        )
        .bind(scope)
        .bind(sender::clock::minute_start(since))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(minute_stats).collect())
    }

    async fn minute_rows(&self, minute: Millis) -> Result<Vec<(String, MinuteStats)>, StoreError> {
        let rows = sqlx::query(
            "SELECT scope, minute_ms, cap, granted, used, sent FROM minute_ledger WHERE minute_ms = $1 ORDER BY scope LIMIT 10000",
        )
        .bind(minute)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>("scope"), minute_stats(r)))
            .collect())
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
                scope: format!("campaign:{id}"),
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

    async fn metrics_view(
        &self,
        current_minute: Millis,
    ) -> Result<crate::metrics::StoreView, StoreError> {
        let count = |r: &AnyRow, k: &str| r.get::<i64, _>(k).max(0) as u64;
        let ledger = sqlx::query(
            "SELECT scope, CAST(sum(granted) AS BIGINT) AS granted, \
             CAST(sum(CASE WHEN minute_ms < $1 AND granted > used THEN granted - used ELSE 0 END) AS BIGINT) AS forfeited \
             FROM minute_ledger GROUP BY scope ORDER BY scope",
        )
        .bind(current_minute)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| (r.get("scope"), count(r, "granted"), count(r, "forfeited")))
        .collect();
        let queue = sqlx::query(
            "SELECT r.state, count(*) AS n FROM recipients r JOIN campaigns c ON c.id = r.campaign_id \
             WHERE c.status = 'running' GROUP BY r.state ORDER BY r.state",
        )
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| (r.get("state"), count(r, "n")))
        .collect();
        let campaigns = sqlx::query(
            "SELECT status, count(*) AS n FROM campaigns GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| (r.get("status"), count(r, "n")))
        .collect();
        Ok(crate::metrics::StoreView {
            ledger,
            queue,
            campaigns,
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
            let n: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM recipients WHERE campaign_id = $1 AND state IN {OPEN_STATES} \
                 AND lower(email) LIKE $2"
            ))
            .bind(id)
            .bind(format!("%@{}", d.to_ascii_lowercase()))
            .fetch_one(&self.read)
            .await?;
            out.push(n);
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
