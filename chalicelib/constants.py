"""Fixed values: what no environment variable sets.

The deploy's shape (repeated in .chalice/config.json, infra/ and
``sessionsync bootstrap``; tests/integration/deploy/test_infra.py keeps them
equal) and the limits of what sessionsync accepts.  The settings an
environment variable sets, with their defaults and bounds, are declared in
chalicelib/config.py.
"""

# --- the queues and the consumer ---------------------------------------------

#: the queue the consumer Lambda subscribes to when SESSION_QUEUE_NAME is unset
DEFAULT_QUEUE_NAME = "sessionsync-events"
#: SQS requires a FIFO queue's name to end in this suffix
FIFO_SUFFIX = ".fifo"
# The event source mapping: up to 10 messages per invocation, and at most
# CONSUMER_MAX_CONCURRENCY invocations at once so that the consumer cannot
# open more PostgreSQL connections than that (one per warm Lambda).
CONSUMER_BATCH_SIZE = 10
CONSUMER_MAX_CONCURRENCY = 5
# The consumer Lambda's timeout (.chalice/config.json: persist_changes); the
# queue's visibility timeout is six times it, as AWS recommends, so that a
# batch still being retried by Lambda is not delivered a second time.
CONSUMER_TIMEOUT_SECONDS = 30
QUEUE_VISIBILITY_TIMEOUT = 6 * CONSUMER_TIMEOUT_SECONDS
QUEUE_MAX_RECEIVE_COUNT = 5
#: SQS caps a message at 1 MiB; a change event is the state plus ~300 bytes
SQS_MESSAGE_LIMIT = 1024 * 1024

# --- a session's lifetime (the ttl_seconds of a request, and SESSION_TTL) ----

MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 30 * 24 * 3600

# --- audit retention (SYNC_EVENTS_RETENTION_DAYS, ``sessionsync retention``) --

# The shortest retention: a message for a persisted (session, version) may
# still reach the consumer that long after (the main queue keeps a message 4
# days, the DLQ 14, a redrive sends it again for 4 more), and the consumer
# needs the row to tell a duplicate from a conflict
# (docs/decisions/audit-retention.md).
MIN_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 100 * 366
# Rows one purge statement scans (and at most deletes): one short transaction
# each, far inside the connection's statement_timeout.
DEFAULT_RETENTION_BATCH = 1000
MAX_RETENTION_BATCH = 10_000

# --- the scheduled functions (relay_outbox, sweep_expired, purge_sync_events) --

# The outbox relay runs continuously (chalicelib.pipeline.outbox,
# docs/decisions/relay-off-the-request-path.md): EventBridge invokes it every
# RELAY_SCHEDULE_SECONDS, each run holds the lease until the next run takes
# over (or until its timeout, if the next never comes: a missed schedule
# leaves no gap), so two runs overlap for a moment: reserved concurrency 2.
RELAY_SCHEDULE_SECONDS = 60
RELAY_TIMEOUT_SECONDS = 180
RELAY_RESERVED_CONCURRENCY = 2
#: a relay that stopped renewing its lease is taken over after this long
RELAY_LEASE_SECONDS = 5.0
#: the relay's lanes: SendMessageBatch calls it keeps in flight at once (up to 10 entries each;
#: docs/decisions/relay-off-the-request-path.md: 8 drained LocalStack 1.4x
#: faster than 4, within boto3's pool of 10 connections)
RELAY_SENDERS = 8

#: a scheduled run stops this long before its Lambda's timeout
SCHEDULE_MARGIN_SECONDS = 5.0
#: what a run assumes is left when called without a Lambda context (locally)
SCHEDULE_REMAINING_WITHOUT_CONTEXT = 55.0
#: the least a run is given, however close the timeout
SCHEDULE_MIN_BUDGET_SECONDS = 1.0

# --- owners (GET and DELETE /owners/{owner_id}/sessions) ----------------------

#: where a revoke-all that answered ``remaining`` stopped walking PostgreSQL
#: is kept this long for the next call (which the client makes at once)
REVOKE_POSITION_TTL_SECONDS = 24 * 3600

# --- the API key authorizer ----------------------------------------------------

#: how long API Gateway keeps the authorizer's answer for a token: with the
#: keys' own cache, how long a revoked key may still work (chalicelib/api/auth.py)
AUTHORIZER_TTL_SECONDS = 300
