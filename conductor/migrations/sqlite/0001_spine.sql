CREATE TABLE campaigns (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    from_json     TEXT NOT NULL,
    reply_to_json TEXT,
    template_name TEXT,
    template_json TEXT NOT NULL,
    status        TEXT NOT NULL,
    status_reason TEXT,
    batch_size    INTEGER NOT NULL,
    total         INTEGER NOT NULL,
    duplicates    INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    completed_ms  INTEGER
);

CREATE TABLE batches (
    campaign_id   TEXT NOT NULL REFERENCES campaigns(id),
    n             INTEGER NOT NULL,
    size          INTEGER NOT NULL,
    body_key      TEXT,
    rendered_ms   INTEGER,
    dispatched_ms INTEGER,
    PRIMARY KEY (campaign_id, n)
);

CREATE TABLE recipients (
    campaign_id TEXT NOT NULL,
    id          INTEGER NOT NULL,
    batch       INTEGER NOT NULL,
    email       TEXT NOT NULL,
    name        TEXT,
    data        TEXT NOT NULL,
    state       TEXT NOT NULL,
    lease_id    TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    retry_at_ms INTEGER,
    provider_id TEXT,
    reason      TEXT,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, id)
) WITHOUT ROWID;

-- Leasing finds the lowest batch with sendable recipients; counts group by state.
CREATE INDEX recipients_by_state ON recipients (campaign_id, state, batch, id);
CREATE INDEX recipients_by_lease ON recipients (lease_id) WHERE lease_id IS NOT NULL;

CREATE TABLE leases (
    id          TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL,
    batch       INTEGER NOT NULL,
    minute_ms   INTEGER NOT NULL,
    tokens      INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    closed_ms   INTEGER
);
CREATE INDEX leases_open ON leases (expires_ms) WHERE closed_ms IS NULL;

-- One row per (scope, calendar minute): the cap in force for that minute, tokens granted, provider
-- requests made and messages accepted, and the slot line (next_slot_ms) that spaces the grants.
CREATE TABLE minute_ledger (
    scope        TEXT NOT NULL,
    minute_ms    INTEGER NOT NULL,
    cap          INTEGER NOT NULL,
    granted      INTEGER NOT NULL,
    used         INTEGER NOT NULL DEFAULT 0,
    sent         INTEGER NOT NULL DEFAULT 0,
    next_slot_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, minute_ms)
);
