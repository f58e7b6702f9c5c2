-- A session ends when its lifetime ends (docs/decisions/session-lifetime.md).
--
-- sync_sessions.expires_at: when the session's lifetime ends (its last
-- write plus its TTL; for an expired session, the lifetime that ended),
-- from the change event's expires_at (derived from occurred_at + ttl for an
-- event written before events carried it).  Nullable: a consumer of the
-- previous release, still running while this is applied, writes rows
-- without it; readers then derive it from updated_at + ttl_seconds.
-- sync_sessions.expired: a session_expired event (the expiry sweep) was
-- recorded; such a session is never recovered again.
--
-- Two event types: session_touched (the lifetime extended, the state
-- unchanged and carried) and session_expired (no state, like a deletion).

ALTER TABLE sync_sessions
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN expired    boolean NOT NULL DEFAULT false;

UPDATE sync_sessions SET expires_at = updated_at + make_interval(secs => ttl_seconds);

ALTER TABLE sync_sessions
    DROP CONSTRAINT sync_sessions_state_matches_deleted,
    ADD CONSTRAINT sync_sessions_state_matches_deleted CHECK (
        CASE WHEN deleted OR expired THEN state IS NULL
             ELSE state IS NOT NULL AND jsonb_typeof(state) = 'object' END),
    ADD CONSTRAINT sync_sessions_deleted_or_expired CHECK (NOT (deleted AND expired));

ALTER TABLE sync_events
    DROP CONSTRAINT sync_events_event_type_known,
    ADD CONSTRAINT sync_events_event_type_known CHECK (
        event_type IN ('session_created', 'session_updated', 'session_deleted',
                       'session_touched', 'session_expired')),
    DROP CONSTRAINT sync_events_state_matches_type,
    ADD CONSTRAINT sync_events_state_matches_type CHECK (
        CASE WHEN event_type IN ('session_deleted', 'session_expired') THEN state IS NULL
             ELSE state IS NOT NULL AND jsonb_typeof(state) = 'object' END);

-- the expiry sweep's candidates: live sessions whose lifetime ended
CREATE INDEX sync_sessions_expires_at_idx ON sync_sessions (expires_at)
    WHERE NOT deleted AND NOT expired;
