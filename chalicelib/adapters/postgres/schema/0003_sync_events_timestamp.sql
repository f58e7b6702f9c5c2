-- sync_events.timestamp: the time of the change (occurred_at), under the
-- name operators' saved queries use ("SELECT * FROM sync_events ORDER BY
-- timestamp DESC LIMIT 10" keeps working unchanged; docs/troubleshooting.md).
--
-- A generated column: PostgreSQL fills it from occurred_at on every insert,
-- so the consumer's INSERT (which names its columns) is unchanged and the
-- two can never disagree.  It cannot be written, only read.  Adding a stored
-- generated column rewrites the table under an ACCESS EXCLUSIVE lock: on a
-- large audit trail, run it while the consumer is paused (the changes wait
-- in SQS meanwhile, nothing is lost).

ALTER TABLE sync_events
    ADD COLUMN "timestamp" timestamptz GENERATED ALWAYS AS (occurred_at) STORED;

-- "recent changes", newest first, as the saved query asks for them
CREATE INDEX sync_events_timestamp_idx ON sync_events ("timestamp" DESC);
