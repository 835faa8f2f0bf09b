-- A campaign is stored as its list arrives: `importing` (or a `draft` taking a new list) until the
-- whole list validated, its upload heard from at every chunk (`import_heard_ms`, NULL when no upload
-- runs); one whose import failed or whose uploader fell silent is `discarded` — hidden at once, its
-- rows removed in chunks. The store finds duplicates, by canonical address, as rows are inserted.
ALTER TABLE campaigns ADD COLUMN import_heard_ms BIGINT;
DROP INDEX recipients_by_email_key;
CREATE UNIQUE INDEX recipients_by_email_key ON recipients (email_key, campaign_id);

-- `Idempotency-Key` of a campaign creation: a retried request gets the campaign the first one made.
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_ms);
