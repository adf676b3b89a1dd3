-- Statistics that cost more than they are worth on the write path.
--
-- Payload columns are stored and served, never filtered on: the planner has no use for
-- statistics about them. Gathering them was the costliest thing PostgreSQL did while
-- the projector drained a burst (autovacuum's ANALYZE sorting `jsonb` samples of
-- `records`: 40% of PostgreSQL's CPU in a profile of the bench).
ALTER TABLE records
    ALTER COLUMN data     SET STATISTICS 0,
    ALTER COLUMN field_at SET STATISTICS 0;
ALTER TABLE change_log
    ALTER COLUMN data   SET STATISTICS 0,
    ALTER COLUMN fields SET STATISTICS 0,
    ALTER COLUMN actor  SET STATISTICS 0,
    ALTER COLUMN origin SET STATISTICS 0;

-- The two tables grow by appends at the log's rate. By default autovacuum analyzes a
-- table after 10% of it changed, starting at 50 rows: a table growing from empty to
-- 100k rows was analyzed dozens of times (a sort of 30k sampled keys each; a quarter of
-- PostgreSQL's CPU during the same drain). Every plan here is an index probe or range
-- scan on a leading key, which needs no fresh distribution: analyze after 10k changed
-- rows at least. The append-only change log is vacuumed after 100k inserted rows
-- rather than 1k (it has nothing to reclaim; vacuum only marks pages all-visible).
ALTER TABLE change_log SET (
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_insert_threshold = 100000
);
ALTER TABLE records SET (autovacuum_analyze_threshold = 10000);
