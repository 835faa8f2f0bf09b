-- Counters kept in the same transaction as every change of a recipient's state (see store/tally.rs),
-- so that no read path counts recipients and no lease scans them: a campaign's recipients per state,
-- its open recipients per domain (the ETA), per batch the rendered recipients waiting (a lease takes
-- the lowest batch that has any, through a partial index), and per campaign its rendered batches.
CREATE TABLE recipient_counts (
    campaign_id TEXT NOT NULL,
    state       TEXT NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, state)
);
CREATE TABLE domain_counts (
    campaign_id TEXT NOT NULL,
    domain      TEXT NOT NULL,
    open        BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, domain)
);
ALTER TABLE batches ADD COLUMN ready BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN batches_total BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN batches_rendered BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN rendered_total BIGINT NOT NULL DEFAULT 0;

INSERT INTO recipient_counts (campaign_id, state, n)
    SELECT campaign_id, state, count(*) FROM recipients GROUP BY campaign_id, state;
-- The domain is what follows the last '@' (rtrim strips every character but '@' from the right).
INSERT INTO domain_counts (campaign_id, domain, open)
    SELECT campaign_id, substr(email_key, length(rtrim(email_key, replace(email_key, '@', ''))) + 1), count(*)
    FROM recipients WHERE state IN ('pending', 'rendered', 'leased', 'deferred') GROUP BY 1, 2;
UPDATE batches SET ready = (SELECT count(*) FROM recipients r
    WHERE r.campaign_id = batches.campaign_id AND r.batch = batches.n AND r.state = 'rendered');
UPDATE campaigns SET
    batches_total = (SELECT count(*) FROM batches b WHERE b.campaign_id = campaigns.id),
    batches_rendered = (SELECT count(*) FROM batches b WHERE b.campaign_id = campaigns.id AND b.rendered_ms IS NOT NULL),
    rendered_total = (SELECT coalesce(sum(b.size), 0) FROM batches b WHERE b.campaign_id = campaigns.id AND b.rendered_ms IS NOT NULL);

-- The batches a lease may take from, the batches still to render, and the deferred recipients by
-- when they come due: each read at its low end, never scanned.
CREATE INDEX batches_with_work ON batches (campaign_id, n) WHERE ready > 0;
CREATE INDEX batches_unrendered ON batches (campaign_id, n) WHERE rendered_ms IS NULL;
CREATE INDEX recipients_due ON recipients (campaign_id, retry_at_ms) WHERE state = 'deferred';
-- Reads of one minute across scopes (the spent domains at each lease, the dashboard's minute).
CREATE INDEX minute_ledger_by_minute ON minute_ledger (minute_ms);
