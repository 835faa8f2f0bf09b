-- Engagement, per campaign that asks for it: what it tracks; its totals, kept in the same
-- transaction as each event so no read counts events; per recipient and kind (open, click) the
-- first and last event and how many were people's and machines'; per link its clicks; and who
-- clicked which link, so a recipient's second click on it is not a second unique click.
ALTER TABLE campaigns ADD COLUMN track_opens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN track_clicks BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN opens_unique BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN opens_human BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN opens_machine BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN clicks_unique BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN clicks_human BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN clicks_machine BIGINT NOT NULL DEFAULT 0;

CREATE TABLE engagement (
    campaign_id  TEXT NOT NULL,
    recipient_id BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    first_ms     BIGINT NOT NULL,
    last_ms      BIGINT NOT NULL,
    human        BIGINT NOT NULL,
    machine      BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, recipient_id, kind)
);
CREATE TABLE links (
    campaign_id   TEXT NOT NULL,
    url           TEXT NOT NULL,
    clicks        BIGINT NOT NULL,
    unique_clicks BIGINT NOT NULL,
    machine       BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, url)
);
CREATE TABLE link_clickers (
    campaign_id  TEXT NOT NULL,
    url          TEXT NOT NULL,
    recipient_id BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, url, recipient_id)
);
