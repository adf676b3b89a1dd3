-- Cheaper writes on the hot path of the projector.
--
-- change_log payloads are stored and served verbatim, never queried inside: `json`
-- (validated text) costs far less to write and to read back than `jsonb` (parsed into
-- a tree). `records` stays `jsonb`.
ALTER TABLE change_log
    ALTER COLUMN data   TYPE json USING data::json,
    ALTER COLUMN fields TYPE json USING fields::json,
    ALTER COLUMN actor  TYPE json USING actor::json,
    ALTER COLUMN origin TYPE json USING origin::json;

-- logged_at grows with seq: a BRIN index maps legacy timestamp cursors to positions at
-- a fraction of a B-tree's cost per insert.
DROP INDEX change_log_logged_at;
CREATE INDEX change_log_logged_at ON change_log USING brin (logged_at);
