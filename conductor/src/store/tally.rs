//! The counters that let every read path skip counting recipients: per campaign, recipients by state;
//! per campaign and domain, recipients still open (the ETA's per-domain queue); per batch, recipients
//! rendered and waiting (which batches a lease may take from); per campaign, batches rendered.
//!
//! Every statement that moves recipients names one state they leave, returns the batch and address
//! key of each row it moved, and records the move in the transaction's [`Tally`]; `apply` writes the
//! sums in the same transaction, so a counter is never out of step with the rows it counts.
//!
//! Locks are taken in one order by every transaction that writes counters — batches, recipient
//! counts, domain counts, then the campaign — so that on PostgreSQL two of them cannot deadlock.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::StoreError;
use crate::domain::recipient::RecipientState;

/// The part of an address key its domain counter is kept under: what follows its last `@`.
pub(super) fn domain_of(key: &str) -> &str {
    key.rsplit('@').next().unwrap_or(key)
}

#[derive(Debug, Default)]
pub(super) struct Tally {
    states: BTreeMap<(String, RecipientState), i64>,
    open: BTreeMap<(String, String), i64>,
    ready: BTreeMap<(String, i64), i64>,
    campaigns: BTreeMap<String, CampaignDelta>,
}

#[derive(Debug, Default, Clone, Copy)]
struct CampaignDelta {
    batches_rendered: i64,
    rendered: i64,
    requests: i64,
}

impl Tally {
    /// A recipient stored in state `to`.
    pub fn added(&mut self, cid: &str, batch: i64, key: &str, to: RecipientState) {
        self.count(cid, batch, key, to, 1);
    }

    /// A recipient moved from `from` to `to`.
    pub fn moved(
        &mut self,
        cid: &str,
        batch: i64,
        key: &str,
        from: RecipientState,
        to: RecipientState,
    ) {
        if from != to {
            self.count(cid, batch, key, from, -1);
            self.count(cid, batch, key, to, 1);
        }
    }

    /// Rows returned by a statement that moved them from `from` to `to` (`RETURNING batch, email_key`).
    pub fn moved_rows(
        &mut self,
        cid: &str,
        rows: &[AnyRow],
        from: RecipientState,
        to: RecipientState,
    ) {
        for row in rows {
            let key: Option<String> = row.get("email_key");
            self.moved(
                cid,
                row.get("batch"),
                key.as_deref().unwrap_or(""),
                from,
                to,
            );
        }
    }

    /// A batch's rendering recorded (`+1`) or undone (`-1`), with its size.
    pub fn batch_rendered(&mut self, cid: &str, size: i64, sign: i64) {
        let c = self.campaigns.entry(cid.to_string()).or_default();
        c.batches_rendered += sign;
        c.rendered += sign * size;
    }

    /// Provider requests made.
    pub fn requests(&mut self, cid: &str, n: i64) {
        self.campaigns.entry(cid.to_string()).or_default().requests += n;
    }

    fn count(&mut self, cid: &str, batch: i64, key: &str, state: RecipientState, n: i64) {
        *self.states.entry((cid.to_string(), state)).or_default() += n;
        if state.is_open() {
            *self
                .open
                .entry((cid.to_string(), domain_of(key).to_string()))
                .or_default() += n;
        }
        if state == RecipientState::Rendered {
            *self.ready.entry((cid.to_string(), batch)).or_default() += n;
        }
    }

    pub async fn apply(self, tx: &mut Transaction<'_, Any>) -> Result<(), StoreError> {
        for ((cid, batch), n) in self.ready.into_iter().filter(|(_, n)| *n != 0) {
            sqlx::query("UPDATE batches SET ready = ready + $1 WHERE campaign_id = $2 AND n = $3")
                .bind(n)
                .bind(cid)
                .bind(batch)
                .execute(&mut **tx)
                .await?;
        }
        let states: Vec<(String, String, i64)> = self
            .states
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|((cid, s), n)| (cid, s.as_str().to_string(), n))
            .collect();
        upsert(
            tx,
            "recipient_counts (campaign_id, state, n)",
            "(campaign_id, state) DO UPDATE SET n = recipient_counts.n + excluded.n",
            &states,
        )
        .await?;
        let open: Vec<(String, String, i64)> = self
            .open
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|((cid, d), n)| (cid, d, n))
            .collect();
        upsert(
            tx,
            "domain_counts (campaign_id, domain, open)",
            "(campaign_id, domain) DO UPDATE SET open = domain_counts.open + excluded.open",
            &open,
        )
        .await?;
        for (cid, c) in self.campaigns {
            if c.batches_rendered == 0 && c.rendered == 0 && c.requests == 0 {
                continue;
            }
            sqlx::query(
                "UPDATE campaigns SET batches_rendered = batches_rendered + $1, \
                 rendered_total = rendered_total + $2, requests = requests + $3 WHERE id = $4",
            )
            .bind(c.batches_rendered)
            .bind(c.rendered)
            .bind(c.requests)
            .bind(cid)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// Adds `rows` of `(campaign, key, n)` to a counter table, a few hundred rows per statement.
async fn upsert(
    tx: &mut Transaction<'_, Any>,
    table: &str,
    conflict: &str,
    rows: &[(String, String, i64)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(500) {
        let sql = format!(
            "INSERT INTO {table} VALUES {} ON CONFLICT {conflict}",
            super::placeholders::values(chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for (cid, key, n) in chunk {
            q = q.bind(cid).bind(key).bind(*n);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecipientState::*;

    #[test]
    fn moves_count_out_of_one_state_into_another() {
        let mut t = Tally::default();
        t.added("c", 0, "a@x.org", Pending);
        t.added("c", 0, "b@y.org", Pending);
        t.moved("c", 0, "a@x.org", Pending, Rendered);
        t.moved("c", 0, "a@x.org", Rendered, Leased);
        t.moved("c", 0, "a@x.org", Leased, Sent);
        t.moved("c", 0, "b@y.org", Pending, Pending);
        assert_eq!(t.states[&("c".into(), Pending)], 1);
        assert_eq!(t.states[&("c".into(), Sent)], 1);
        assert_eq!(t.states[&("c".into(), Rendered)], 0);
        assert_eq!(t.ready[&("c".into(), 0)], 0);
        assert_eq!(t.open[&("c".into(), "x.org".into())], 0);
        assert_eq!(t.open[&("c".into(), "y.org".into())], 1);
    }

    #[test]
    fn the_domain_is_what_follows_the_last_at() {
        assert_eq!(domain_of("a@b.org"), "b.org");
        assert_eq!(domain_of("\"a@b\"@c.org"), "c.org");
        assert_eq!(domain_of("nodomain"), "nodomain");
    }
}
