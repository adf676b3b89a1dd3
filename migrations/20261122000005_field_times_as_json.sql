-- `records.field_at` ({field: instant of its winning write}) is the merge's own
-- bookkeeping: the projector writes it whole and reads it whole, nobody queries inside
-- it. As `json` (validated text) it costs PostgreSQL far less to take in than `jsonb`
-- (parsed into a tree) on every write of a record. `records.data`, the state apps and
-- analytics query, stays `jsonb`.
ALTER TABLE records ALTER COLUMN field_at TYPE json USING field_at::json;
