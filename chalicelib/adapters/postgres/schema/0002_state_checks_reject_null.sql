-- 0001's state checks let a NULL state through where an object is required:
-- jsonb_typeof(NULL) is NULL, so "(... AND jsonb_typeof(state) = 'object')"
-- was NULL rather than false, and a CHECK that evaluates to NULL passes.
-- Rewritten so that the expression is never NULL.  (Applied as a new
-- migration: 0001 may already be recorded in local databases.)

ALTER TABLE sync_events
    DROP CONSTRAINT sync_events_state_matches_type,
    ADD CONSTRAINT sync_events_state_matches_type CHECK (
        CASE WHEN event_type = 'session_deleted' THEN state IS NULL
             ELSE state IS NOT NULL AND jsonb_typeof(state) = 'object' END);

ALTER TABLE sync_sessions
    DROP CONSTRAINT sync_sessions_state_matches_deleted,
    ADD CONSTRAINT sync_sessions_state_matches_deleted CHECK (
        CASE WHEN deleted THEN state IS NULL
             ELSE state IS NOT NULL AND jsonb_typeof(state) = 'object' END);
