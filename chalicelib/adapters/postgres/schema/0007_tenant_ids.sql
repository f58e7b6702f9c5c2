-- Tenants: a session or owner of a tenant other than the default one is
-- kept as "<tenant>/<id>" (chalicelib/domain/tenants.py); the default
-- tenant's ids, and every row written before tenants existed, have no
-- prefix and stay as they are (no row moves).  The id checks widen to take
-- the prefix; the tenant of a row is what precedes its "/", "default" when
-- there is none.
--
-- Online: each new check is added NOT VALID, so no row is scanned (every
-- existing row met the narrower check it replaces); the table is locked
-- only for the catalog change.  New rows are checked as always.

ALTER TABLE sync_sessions DROP CONSTRAINT sync_sessions_session_id_format;
ALTER TABLE sync_sessions ADD CONSTRAINT sync_sessions_session_id_format
    CHECK (session_id ~ '^([a-z0-9][a-z0-9-]{0,31}/)?[A-Za-z0-9_.:-]{1,128}$') NOT VALID;

ALTER TABLE sync_events DROP CONSTRAINT sync_events_session_id_format;
ALTER TABLE sync_events ADD CONSTRAINT sync_events_session_id_format
    CHECK (session_id ~ '^([a-z0-9][a-z0-9-]{0,31}/)?[A-Za-z0-9_.:-]{1,128}$') NOT VALID;

ALTER TABLE sync_sessions DROP CONSTRAINT sync_sessions_owner_id_format;
ALTER TABLE sync_sessions ADD CONSTRAINT sync_sessions_owner_id_format
    CHECK (owner_id IS NULL OR owner_id ~ '^([a-z0-9][a-z0-9-]{0,31}/)?[A-Za-z0-9_.:-]{1,128}$') NOT VALID;
