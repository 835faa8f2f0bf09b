-- History that would otherwise grow forever is pruned by the reconcile loop: closed leases after a
-- day, ledger minutes after eight days (past the seven days `GET /v1/minutes` serves). What a
-- pruned minute counted is folded into its scope's running totals first, so `/metrics` counters never
-- go back.
CREATE TABLE ledger_totals (
    scope     TEXT PRIMARY KEY,
    granted   BIGINT NOT NULL DEFAULT 0,
    used      BIGINT NOT NULL DEFAULT 0,
    sent      BIGINT NOT NULL DEFAULT 0,
    forfeited BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX leases_closed ON leases (closed_ms) WHERE closed_ms IS NOT NULL;
