-- A renderer's claim on a batch (several renderers hear every SNS doorbell; one renders), when a
-- campaign first had work leased (its `started` event), and when its bodies were deleted.
ALTER TABLE batches ADD COLUMN render_claim_ms BIGINT;
ALTER TABLE campaigns ADD COLUMN started_ms BIGINT;
ALTER TABLE campaigns ADD COLUMN bodies_purged_ms BIGINT;
CREATE INDEX leases_by_campaign ON leases (campaign_id);
