-- The durable copy of every session change (sync_events, the audit trail)
-- and the latest state of each session (sync_sessions, used for recovery).
--
-- Constraints are the last line of defence: a message that got past the
-- consumer's checks but is wrong fails here with SQLSTATE class 23 and a
-- named constraint, which the consumer copies into the DLQ message.
-- Constraint names are part of the contract (DLQ attributes, runbooks).

CREATE TABLE sync_sessions (
    session_id   text        NOT NULL,
    version      bigint      NOT NULL,
    -- NULL once deleted; a JSON object otherwise
    state        jsonb,
    deleted      boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    ttl_seconds  integer     NOT NULL,
    persisted_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sync_sessions_pkey PRIMARY KEY (session_id),
    CONSTRAINT sync_sessions_session_id_format CHECK (session_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    CONSTRAINT sync_sessions_version_positive CHECK (version > 0),
    CONSTRAINT sync_sessions_ttl_positive CHECK (ttl_seconds > 0),
    CONSTRAINT sync_sessions_state_matches_deleted CHECK (
        (deleted AND state IS NULL) OR (NOT deleted AND jsonb_typeof(state) = 'object'))
);

CREATE TABLE sync_events (
    session_id   text        NOT NULL,
    version      bigint      NOT NULL,
    event_type   text        NOT NULL,
    -- the state after the change; NULL for a deletion
    state        jsonb,
    occurred_at  timestamptz NOT NULL,
    persisted_at timestamptz NOT NULL DEFAULT now(),
    -- one row per session and version: a redelivered message conflicts here
    -- and is skipped (ON CONFLICT DO NOTHING), which makes the consumer
    -- idempotent.  Also the index behind history pages (newest first).
    CONSTRAINT sync_events_session_version_key PRIMARY KEY (session_id, version),
    CONSTRAINT sync_events_session_id_format CHECK (session_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    CONSTRAINT sync_events_version_positive CHECK (version > 0),
    CONSTRAINT sync_events_event_type_known CHECK (
        event_type IN ('session_created', 'session_updated', 'session_deleted')),
    CONSTRAINT sync_events_created_at_version_one CHECK (
        event_type <> 'session_created' OR version = 1),
    CONSTRAINT sync_events_state_matches_type CHECK (
        (event_type = 'session_deleted' AND state IS NULL)
        OR (event_type <> 'session_deleted' AND jsonb_typeof(state) = 'object'))
);

-- "recent events" for operators (sessionsync diagnose)
CREATE INDEX sync_events_persisted_at_idx ON sync_events (persisted_at DESC);
