-- Addresses are compared in one canonical form (local part lower-cased as Unicode, domain in IDNA
-- ASCII), computed by the conductor when a recipient is stored: SQLite's lower() folds ASCII only, so
-- a comparison written in SQL would differ between the two backends. Rows stored before this keep
-- their lower-cased address, the same form for every ASCII address.
ALTER TABLE recipients ADD COLUMN email_key TEXT;
UPDATE recipients SET email_key = lower(email);
CREATE INDEX recipients_by_email_key ON recipients (email_key);
DROP INDEX recipients_by_email;

-- Mailgun signs only a timestamp and a token, not the event: every verified post spends its token
-- here, whatever its event, so a captured signature carries nothing a second time.
CREATE TABLE webhook_tokens (
    token   TEXT PRIMARY KEY,
    seen_ms BIGINT NOT NULL
);
CREATE INDEX webhook_tokens_by_age ON webhook_tokens (seen_ms);

-- How often a batch was rendered again because a sender could not read its body.
ALTER TABLE batches ADD COLUMN rerenders BIGINT NOT NULL DEFAULT 0;
