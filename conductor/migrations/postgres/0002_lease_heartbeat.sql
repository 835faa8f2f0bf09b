-- What a silent lease needs to be settled from its slots: when its sender was last heard from, and
-- the order (hence the slot) of each of its recipients.
ALTER TABLE leases ADD COLUMN heard_ms BIGINT;
ALTER TABLE leases ADD COLUMN first_at_ms BIGINT;
ALTER TABLE leases ADD COLUMN spacing_us BIGINT;
ALTER TABLE leases ADD COLUMN recipients TEXT;
