-- sync_sessions.owner_id: the owner a session was created with (the
-- optional owner_id of its change events), NULL for a session without one.
-- An event without owner_id (one written before owners existed, or of an
-- unowned session) never clears it: the consumer keeps the stored owner.
--
-- The index answers "the sessions of this owner" for operators and audits
-- (the API lists an owner's live sessions from Redis).  Partial: unowned
-- sessions cost it nothing.  Adding a nullable column without a default
-- does not rewrite the table; the index build locks writes to the table
-- while it runs (the consumer's changes wait in SQS meanwhile).

ALTER TABLE sync_sessions ADD COLUMN owner_id text;

ALTER TABLE sync_sessions ADD CONSTRAINT sync_sessions_owner_id_format
    CHECK (owner_id IS NULL OR owner_id ~ '^[A-Za-z0-9_.:-]{1,128}$');

CREATE INDEX sync_sessions_owner_id_idx ON sync_sessions (owner_id, session_id)
    WHERE owner_id IS NOT NULL;
