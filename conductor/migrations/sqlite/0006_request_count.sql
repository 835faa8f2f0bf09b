-- Provider requests made for a campaign, kept as a running total by each lease report, so that its
-- counts (read every second by the progress stream and the campaign view) need only the state index
-- rather than every recipient row's attempts.
ALTER TABLE campaigns ADD COLUMN requests BIGINT NOT NULL DEFAULT 0;
UPDATE campaigns SET requests = (
    SELECT coalesce(sum(r.attempts), 0) FROM recipients r WHERE r.campaign_id = campaigns.id
);
