-- The change log and the record state projected from it.
-- Every table here is a projection of the JetStream log and can be rebuilt from it.

-- One row per record-change event, keyed by its stream sequence (the global cursor).
CREATE TABLE change_log (
    seq            BIGINT      PRIMARY KEY,
    -- Deterministic per client change: a resend that JetStream's duplicate window no
    -- longer catches is still applied at most once.
    event_id       UUID        NOT NULL UNIQUE,
    app_id         TEXT        NOT NULL,
    space_id       TEXT        NOT NULL,
    table_name     TEXT        NOT NULL,
    record_id      TEXT        NOT NULL,
    op             TEXT        NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    -- Effective instant of an insert or delete (after the clock-skew rule).
    at             TIMESTAMPTZ,
    -- Insert: the record as sent. Update: {field: {value, at}}.
    data           JSONB,
    fields         JSONB,
    user_id        TEXT        NOT NULL,
    client_id      TEXT        NOT NULL,
    actor          JSONB,
    origin         JSONB,
    schema_version INT         NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL,
    -- When JetStream stored the event; legacy timestamp cursors are mapped through it.
    logged_at      TIMESTAMPTZ NOT NULL
);

-- "space/app/table after sequence N" (pull) and "space/app after N" (push response).
CREATE INDEX change_log_space_app_table_seq ON change_log (space_id, app_id, table_name, seq);
CREATE INDEX change_log_space_app_seq ON change_log (space_id, app_id, seq);
CREATE INDEX change_log_logged_at ON change_log (logged_at);

-- Current state per record: field-level last-write-wins over the change log.
CREATE TABLE records (
    space_id    TEXT        NOT NULL,
    app_id      TEXT        NOT NULL,
    table_name  TEXT        NOT NULL,
    record_id   TEXT        NOT NULL,
    data        JSONB       NOT NULL,
    -- {field: canonical instant of its winning write}
    field_at    JSONB       NOT NULL,
    exists_at   TIMESTAMPTZ,
    deleted_at  TIMESTAMPTZ,
    -- The user whose event created the record.
    author_id   TEXT        NOT NULL,
    created_seq BIGINT      NOT NULL,
    updated_seq BIGINT      NOT NULL,
    PRIMARY KEY (space_id, app_id, table_name, record_id)
);

-- How far each projector has applied the log; written in the same transaction as the
-- rows it covers.
CREATE TABLE projector_checkpoints (
    name       TEXT        PRIMARY KEY,
    last_seq   BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Events the projector could not apply, parked with the reason instead of being
-- retried forever or dropped silently.
CREATE TABLE dead_letters (
    seq       BIGINT      PRIMARY KEY,
    subject   TEXT        NOT NULL,
    payload   BYTEA       NOT NULL,
    reason    TEXT        NOT NULL,
    parked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
