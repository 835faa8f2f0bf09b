-- A recipient's template data is written once and read when its batch renders; its state changes
-- three times or more. Kept in the recipient's row, every state change rewrote the data too (about
-- 1 KB a recipient for a newsletter's fields): 12 KB of WAL and checkpoint writes per message sent.
CREATE TABLE recipient_data (
    campaign_id TEXT NOT NULL,
    id          INTEGER NOT NULL,
    data        TEXT NOT NULL,
    PRIMARY KEY (campaign_id, id)
) WITHOUT ROWID;
INSERT INTO recipient_data (campaign_id, id, data) SELECT campaign_id, id, data FROM recipients;
ALTER TABLE recipients DROP COLUMN data;
