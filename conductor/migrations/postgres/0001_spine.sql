CREATE TABLE campaigns (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    from_json     TEXT NOT NULL,
    reply_to_json TEXT,
    template_name TEXT,
    template_json TEXT NOT NULL,
    status        TEXT NOT NULL,
    status_reason TEXT,
    batch_size    BIGINT NOT NULL,
    total         BIGINT NOT NULL,
    duplicates    BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL,
    completed_ms  BIGINT
);

CREATE TABLE batches (
    campaign_id   TEXT NOT NULL REFERENCES campaigns(id),
    n             BIGINT NOT NULL,
    size          BIGINT NOT NULL,
    body_key      TEXT,
    rendered_ms   BIGINT,
    dispatched_ms BIGINT,
    PRIMARY KEY (campaign_id, n)
);

CREATE TABLE recipients (
    campaign_id TEXT NOT NULL,
    id          BIGINT NOT NULL,
    batch       BIGINT NOT NULL,
    email       TEXT NOT NULL,
    name        TEXT,
    data        TEXT NOT NULL,
    state       TEXT NOT NULL,
    lease_id    TEXT,
    attempts    BIGINT NOT NULL DEFAULT 0,
    retry_at_ms BIGINT,
    provider_id TEXT,
    reason      TEXT,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, id)
);

CREATE INDEX recipients_by_state ON recipients (campaign_id, state, batch, id);
CREATE INDEX recipients_by_lease ON recipients (lease_id) WHERE lease_id IS NOT NULL;

CREATE TABLE leases (
    id          TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL,
    batch       BIGINT NOT NULL,
    minute_ms   BIGINT NOT NULL,
    tokens      BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    closed_ms   BIGINT
);
CREATE INDEX leases_open ON leases (expires_ms) WHERE closed_ms IS NULL;

CREATE TABLE minute_ledger (
    scope        TEXT NOT NULL,
    minute_ms    BIGINT NOT NULL,
    cap          BIGINT NOT NULL,
    granted      BIGINT NOT NULL,
    used         BIGINT NOT NULL DEFAULT 0,
    sent         BIGINT NOT NULL DEFAULT 0,
    next_slot_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, minute_ms)
);
