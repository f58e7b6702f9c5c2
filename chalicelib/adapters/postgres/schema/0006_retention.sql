-- The purge of old sync_events rows (SYNC_EVENTS_RETENTION_DAYS,
-- chalicelib/adapters/postgres/retention.py) walks the table oldest first
-- in batches, resuming each batch after the last row the previous one
-- looked at: (persisted_at, session_id, version), a total order, so that a
-- batch reads its rows off this index and no row is looked at twice in a
-- run, however many rows share a persisted_at (a consumer batch does) and
-- however many old rows it keeps (every session's latest).
--
-- Building it locks sync_events against writes (a migration runs in a
-- transaction, so not CONCURRENTLY): on a large audit trail, run it while
-- the consumer is paused (the changes wait in SQS meanwhile, nothing is
-- lost), as for 0003.

CREATE INDEX sync_events_retention_idx ON sync_events (persisted_at, session_id, version);

-- Where a purge run that ran out of time stopped (at most one row): the next
-- run resumes there instead of looking at the same kept rows again, so the
-- purge gets through a table however many old rows it keeps.  Cleared when a
-- run reaches the end; the next run starts over from the oldest row (rows it
-- kept may have been replaced since).
CREATE TABLE sync_events_purge_cursor (
    id           boolean     PRIMARY KEY DEFAULT true CHECK (id),
    persisted_at timestamptz NOT NULL,
    session_id   text        NOT NULL,
    version      bigint      NOT NULL,
    saved_at     timestamptz NOT NULL DEFAULT now()
);
