-- Spaces, memberships, record visibility, and row-level security on every tenant table.
-- Like everything else here, these tables are projections of the log.

CREATE TABLE spaces (
    space_id    TEXT   PRIMARY KEY,
    type        TEXT   NOT NULL CHECK (type IN ('personal', 'brand', 'club', 'family', 'team', 'practice')),
    name        TEXT   NOT NULL,
    -- The user (or service) whose event created the space.
    created_by  TEXT   NOT NULL,
    created_seq BIGINT NOT NULL,
    -- Set by SpaceDeleted; a deleted space has no members and takes none.
    deleted_seq BIGINT
);

CREATE TABLE space_members (
    space_id    TEXT   NOT NULL,
    user_id     TEXT   NOT NULL,
    role        TEXT   NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    updated_seq BIGINT NOT NULL,
    PRIMARY KEY (space_id, user_id)
);
CREATE INDEX space_members_user ON space_members (user_id);

-- Records whose visibility is not the default (`space`), or was not at some point.
-- Written by the log stage in the same transaction as the change that set it, so a
-- private record is never readable by others, not even for a moment.
CREATE TABLE record_visibility (
    space_id    TEXT   NOT NULL,
    app_id      TEXT   NOT NULL,
    table_name  TEXT   NOT NULL,
    record_id   TEXT   NOT NULL,
    author_id   TEXT   NOT NULL,
    visibility  TEXT   NOT NULL CHECK (visibility IN ('private', 'space', 'unlisted', 'public')),
    updated_seq BIGINT NOT NULL,
    PRIMARY KEY (space_id, app_id, table_name, record_id)
);

-- The caller of the current transaction, as the gateway set it (`set_config(..., true)`).
-- Unset means nobody: every policy below then matches nothing (fail closed).
CREATE FUNCTION sync_caller() RETURNS TEXT LANGUAGE sql STABLE AS
$$ SELECT NULLIF(current_setting('sync.user_id', true), '') $$;

CREATE FUNCTION sync_caller_spaces() RETURNS TEXT[] LANGUAGE sql STABLE AS
$$ SELECT COALESCE(NULLIF(current_setting('sync.spaces', true), ''), '{}')::TEXT[] $$;

-- The role the gateway reads through: no BYPASSRLS, SELECT only. Roles are global to
-- the cluster, so another database may have created it already (or be doing so now),
-- or an administrator did, for a migrating user without CREATEROLE (scripts/dev does).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sync_reader') THEN
        CREATE ROLE sync_reader NOLOGIN NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
    IF NOT pg_has_role(CURRENT_USER, 'sync_reader', 'MEMBER') THEN
        GRANT sync_reader TO CURRENT_USER;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
GRANT SELECT ON change_log, records, spaces, space_members, record_visibility TO sync_reader;

-- Forced row-level security: even the tables' owner is subject to it unless it has
-- BYPASSRLS (the projector's role needs BYPASSRLS or superuser to write).
ALTER TABLE change_log        ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE records           ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE spaces            ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE space_members     ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE record_visibility ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;

-- Whether any record in the caller's spaces is private to someone else: when none is
-- (the common case), the policies skip the per-row private check altogether.
CREATE FUNCTION sync_others_private() RETURNS BOOLEAN LANGUAGE sql STABLE AS
$$ SELECT EXISTS (SELECT 1 FROM record_visibility
                  WHERE space_id = ANY (sync_caller_spaces()) AND visibility = 'private'
                    AND author_id IS DISTINCT FROM sync_caller()) $$;

-- `(SELECT f())` makes each setting an init plan: read once per query, not per row.
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
