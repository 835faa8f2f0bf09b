-- The governor's scopes and schedules: a campaign's own cap and priority, when it may start, and its
-- own sending window; each lease remembers the ledger scopes it drew tokens from (so its report
-- counts requests against each); every change of a cap is kept for GET /v1/governor.
ALTER TABLE campaigns ADD COLUMN per_minute BIGINT;
ALTER TABLE campaigns ADD COLUMN priority BIGINT NOT NULL DEFAULT 1;
ALTER TABLE campaigns ADD COLUMN send_at_ms BIGINT;
ALTER TABLE campaigns ADD COLUMN window_json TEXT;
ALTER TABLE leases ADD COLUMN scopes TEXT;

CREATE TABLE governor_audit (
    at_ms  BIGINT NOT NULL,
    scope  TEXT NOT NULL,
    kind   TEXT NOT NULL,      -- "cap" (a change) or "rejected" (an edit refused)
    old    TEXT,
    new    TEXT,
    source TEXT NOT NULL       -- "config file", "PUT /v1/campaigns/{id}", …
);
CREATE INDEX governor_audit_by_time ON governor_audit (at_ms);
