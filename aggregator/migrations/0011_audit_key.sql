-- Rows chained with a key held outside the database (`audit.key_file`):
-- the key's id, NULL for rows chained with plain SHA-256. Someone who can
-- write to the database but does not hold the key cannot recompute the
-- chain after changing a row.
ALTER TABLE audit_log ADD COLUMN key_id text;
