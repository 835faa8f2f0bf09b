-- Addresses never to be mailed again (hard bounce, complaint, unsubscribe), and every delivery event a
-- provider reported, keyed by the event's own id so a replayed or retried webhook records nothing twice.
CREATE TABLE suppressions (
    email      TEXT PRIMARY KEY,   -- lower-cased
    reason     TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE feedback (
    event_key    TEXT PRIMARY KEY,
    provider     TEXT NOT NULL,
    event        TEXT NOT NULL,
    email        TEXT NOT NULL,
    campaign_id  TEXT,
    recipient_id BIGINT,
    detail       TEXT,
    created_ms   BIGINT NOT NULL
);

CREATE INDEX recipients_by_email ON recipients (lower(email));
