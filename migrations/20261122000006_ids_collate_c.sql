-- Ids compare as bytes.
--
-- Every index here leads with text ids (space, app, table, record, user), and B-tree
-- inserts and probes compare them over and over: with a locale's collation each
-- comparison copies both strings and calls strcoll (even C.UTF-8, which orders by code
-- point, is not recognised as "C" by PostgreSQL 15); with "C" it is a memcmp. Ids are
-- opaque: they are only ever compared for equality or ordered to page by sequence, and
-- byte order is code point order for UTF-8, so nothing visible changes.
--
-- Every column an id is compared with gets the same collation (comparing columns of two
-- different implicit collations is an error). Policies depend on these columns, so they
-- are dropped and recreated unchanged around the change; the tables are not rewritten,
-- their indexes are rebuilt.

DROP POLICY member_spaces ON change_log;
DROP POLICY member_spaces ON records;
DROP POLICY member_spaces ON spaces;
DROP POLICY member_spaces ON space_members;
DROP POLICY member_spaces ON record_visibility;

ALTER TABLE change_log
    ALTER COLUMN app_id     TYPE TEXT COLLATE "C",
    ALTER COLUMN space_id   TYPE TEXT COLLATE "C",
    ALTER COLUMN table_name TYPE TEXT COLLATE "C",
    ALTER COLUMN record_id  TYPE TEXT COLLATE "C",
    ALTER COLUMN user_id    TYPE TEXT COLLATE "C",
    ALTER COLUMN client_id  TYPE TEXT COLLATE "C";

ALTER TABLE records
    ALTER COLUMN space_id   TYPE TEXT COLLATE "C",
    ALTER COLUMN app_id     TYPE TEXT COLLATE "C",
    ALTER COLUMN table_name TYPE TEXT COLLATE "C",
    ALTER COLUMN record_id  TYPE TEXT COLLATE "C",
    ALTER COLUMN author_id  TYPE TEXT COLLATE "C";

ALTER TABLE record_visibility
    ALTER COLUMN space_id   TYPE TEXT COLLATE "C",
    ALTER COLUMN app_id     TYPE TEXT COLLATE "C",
    ALTER COLUMN table_name TYPE TEXT COLLATE "C",
    ALTER COLUMN record_id  TYPE TEXT COLLATE "C",
    ALTER COLUMN author_id  TYPE TEXT COLLATE "C";

ALTER TABLE spaces
    ALTER COLUMN space_id   TYPE TEXT COLLATE "C",
    ALTER COLUMN created_by TYPE TEXT COLLATE "C";

ALTER TABLE space_members
    ALTER COLUMN space_id TYPE TEXT COLLATE "C",
    ALTER COLUMN user_id  TYPE TEXT COLLATE "C";

ALTER TABLE projector_checkpoints
    ALTER COLUMN name TYPE TEXT COLLATE "C";

-- The policies of 20261122000003_spaces_and_tenancy.sql, as they were.
CREATE POLICY member_spaces ON record_visibility FOR SELECT TO sync_reader
    USING (space_id = ANY ((SELECT sync_caller_spaces())::TEXT[]));

CREATE POLICY member_spaces ON change_log FOR SELECT TO sync_reader
    USING (
        space_id = ANY ((SELECT sync_caller_spaces())::TEXT[])
        AND (NOT (SELECT sync_others_private()) OR NOT EXISTS (
            SELECT 1 FROM record_visibility v
            WHERE v.space_id = change_log.space_id AND v.app_id = change_log.app_id
              AND v.table_name = change_log.table_name AND v.record_id = change_log.record_id
              AND v.visibility = 'private' AND v.author_id IS DISTINCT FROM (SELECT sync_caller())
        ))
    );

CREATE POLICY member_spaces ON records FOR SELECT TO sync_reader
    USING (
        space_id = ANY ((SELECT sync_caller_spaces())::TEXT[])
        AND (NOT (SELECT sync_others_private()) OR NOT EXISTS (
            SELECT 1 FROM record_visibility v
            WHERE v.space_id = records.space_id AND v.app_id = records.app_id
              AND v.table_name = records.table_name AND v.record_id = records.record_id
              AND v.visibility = 'private' AND v.author_id IS DISTINCT FROM (SELECT sync_caller())
        ))
    );

CREATE POLICY member_spaces ON spaces FOR SELECT TO sync_reader
    USING (space_id = ANY ((SELECT sync_caller_spaces())::TEXT[]));

CREATE POLICY member_spaces ON space_members FOR SELECT TO sync_reader
    USING (space_id = ANY ((SELECT sync_caller_spaces())::TEXT[]) OR user_id = (SELECT sync_caller()));
