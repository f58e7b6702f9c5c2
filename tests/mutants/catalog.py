"""The named mutants.

Each breaks one guarantee (its number in docs/guarantees.md) with exact text
replacements in one file, and names the tests that must fail on it: pytest
node ids, kept few so that a mutant costs seconds.  A replacement whose
``old`` text is not in the file exactly once is an error, never a skip: a
refactor cannot silently disarm a mutant (tests/unit/test_mutant_catalog.py
checks this in every ``make test``).

Add one with every new guarantee.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (which must occur exactly once) with ``new`` in ``file``."""

    file: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutant:
    name: str
    guarantee: int
    #: applied in order, each to the file as the previous edits left it
    edits: tuple[Edit, ...]
    #: pytest node ids that must catch it (at least one must fail)
    tests: tuple[str, ...]
    what: str

    @property
    def files(self) -> list[str]:
        return sorted({edit.file for edit in self.edits})


def mutant(name: str, guarantee: int, file: str, replacements: tuple[tuple[str, str], ...],
           tests: tuple[str, ...], what: str) -> Mutant:
    """A mutant of one file: (old, new) pairs."""
    return Mutant(name, guarantee, tuple(Edit(file, old, new) for old, new in replacements), tests, what)


REDIS = "chalicelib/adapters/redis"
STORE = f"{REDIS}/store.py"
KEYS = f"{REDIS}/keys.py"
LUA_LIB = f"{REDIS}/scripts/lib.lua"
LUA_WRITE = f"{REDIS}/scripts/write.lua"
LUA_CREATE = f"{REDIS}/scripts/create.lua"
LUA_UPDATE = f"{REDIS}/scripts/update.lua"
LUA_DELETE = f"{REDIS}/scripts/delete.lua"
LUA_RESTORE = f"{REDIS}/scripts/restore.lua"
LUA_VOUCH = f"{REDIS}/scripts/vouch.lua"
LUA_GET = f"{REDIS}/scripts/get.lua"
LUA_EXPIRE = f"{REDIS}/scripts/expire.lua"
LUA_SETTLE = f"{REDIS}/scripts/settle.lua"
LUA_LEASE = f"{REDIS}/scripts/lease.lua"
LUA_MIGRATE_MARKERS = f"{REDIS}/scripts/migrate_markers.lua"
SCRIPTS_INIT = f"{REDIS}/scripts/__init__.py"
SESSIONS = "chalicelib/service/sessions.py"
PERSISTENCE = "chalicelib/adapters/postgres/database.py"
CONSUMER = "chalicelib/pipeline/consumer.py"
DEAD_LETTERS = "chalicelib/pipeline/dead_letters.py"
PRODUCER = "chalicelib/pipeline/producer.py"
OUTBOX = "chalicelib/pipeline/outbox.py"
REDIS_CLIENT = f"{REDIS}/client.py"
REDIS_ERRORS = f"{REDIS}/errors.py"

T_STORE = "tests/integration/store/test_store.py"
T_CAS_LATENCY = "tests/integration/store/test_cas_latency.py"
T_EPOCHS = "tests/integration/store/test_store_epochs.py"
T_MARKERS = "tests/integration/store/test_markers.py"
T_FORMATS = "tests/integration/store/test_marker_formats.py"
T_MIGRATION = "tests/integration/ops/test_marker_migration.py"
T_RULES = "tests/integration/recovery/test_recovery_rules.py"
T_CONFLICTS = "tests/integration/pipeline/test_version_conflicts.py"
T_PERSISTENCE = "tests/integration/pipeline/test_persistence.py"
T_UNITS = "tests/unit/test_pipeline_units.py"
T_SCRIPTS = "tests/unit/test_redis_scripts.py"
T_SHIP = "tests/integration/pipeline/test_producer_acks.py"
T_RELAY = "tests/integration/pipeline/test_relay_continuous.py"
T_OUTAGE = "tests/integration/redis/test_redis_outage.py"
T_FAILOVER = "tests/integration/redis/test_redis_failover.py"
T_HOT = "tests/integration/store/test_redis_hot_path.py"
T_IDEMPOTENCY = "tests/integration/sessions/test_idempotency.py"
T_EVIDENCE = "tests/integration/redis/test_failover_evidence.py"
T_CLUSTER_EVIDENCE = "tests/integration/redis/test_cluster_failover_evidence.py"
T_WAIT = "tests/integration/redis/test_wait_replicas.py"
T_LIFE = "tests/integration/sessions/test_session_lifetime.py"
T_LIFE_UNITS = "tests/unit/test_session_lifetime_units.py"
EXPIRY = "chalicelib/pipeline/expiry.py"
T_PATCH = "tests/integration/sessions/test_merge_patch.py"
T_OWNERS = "tests/integration/sessions/test_owners.py"
OWNERS = "chalicelib/service/owners.py"
PG_CONNECTION = "chalicelib/adapters/postgres/connection.py"
PG_RETENTION = "chalicelib/adapters/postgres/retention.py"
T_PGBOUNCER = "tests/integration/lambda_zip/test_through_pgbouncer.py"
SERVE_LIMITS = "sessionsync/serve_limits.py"
T_SERVE = "tests/integration/api/test_serve.py"
T_TENANTS = "tests/functional/test_tenants.py"
T_KEYS = "tests/unit/test_api_keys.py"
TENANTS = "chalicelib/service/tenants.py"
T_CAP = "tests/functional/test_tenant_cap.py"
LUA_TENANT_COUNT = f"{REDIS}/scripts/tenant_count.lua"
AUTH = "chalicelib/api/auth.py"
REQUEST = "chalicelib/api/request.py"

MUTANTS: tuple[Mutant, ...] = (
    # -- 1: compare-and-set -----------------------------------------------------
    mutant(
        "cas-version-check-removed", 1, LUA_WRITE,
        (("  if EXPECTED ~= '' and v ~= tonumber(EXPECTED) then return {'conflict', v} end\n", ""),),
        (f"{T_STORE}::test_an_update_with_a_stale_version_changes_nothing[single]",),
        "the update script writes whatever version the caller expected"),
    mutant(
        "delete-version-check-removed", 1, LUA_DELETE,
        (("local refused, _, v, created, _, ttl, _, o, ep = open_live()\n",
          "EXPECTED = ''\nlocal refused, _, v, created, _, ttl, _, o, ep = open_live()\n"),),
        (f"{T_STORE}::test_a_delete_with_a_stale_version_is_refused[single]",),
        "a conditional delete ignores its expected version"),
    Mutant(
        "cas-check-then-write-in-python", 1,
        (Edit(LUA_WRITE,
              "  if EXPECTED ~= '' and v ~= tonumber(EXPECTED) then return {'conflict', v} end\n", ""),
         Edit(STORE, "        reply = self._write(self._update, session_id, idempotency,\n",
              "        current = self.get(session_id)\n"
              "        if current is not None and current.version != expected_version:\n"
              "            raise ConcurrencyError(session_id, expected_version=expected_version,\n"
              "                                   actual_version=current.version)\n"
              "        reply = self._write(self._update, session_id, idempotency,\n")),
        # on a fast loopback a busy machine may run the racers one after
        # another; the slow network makes the window wide on purpose
        (f"{T_CAS_LATENCY}::test_of_8_writers_on_a_slow_network_updating_the_same_version_exactly_one_wins",
         f"{T_STORE}::test_of_32_threads_updating_the_same_version_exactly_one_wins[single]"),
        "the version is checked by a GET before the script writes: racing writers both win"),
    mutant(
        "patch-retry-writes-onto-the-stale-read", 1, SESSIONS,
        (("            state_json = validation.merged_state(current.state, request.state_patch,\n",
          "            state_json = state_json if attempt else validation.merged_state(\n"
          "                current.state, request.state_patch,\n"),),
        (f"{T_PATCH}::test_64_concurrent_patches_of_different_keys_all_land_each_on_the_version_it_read[single]",),
        "a PATCH that lost its compare-and-set writes the state it merged into its first read at "
        "the new version: another patch's change is lost"),
    mutant(
        "patch-written-without-expected-version", 1, SESSIONS,
        (("request.session_id, state_json, current.version, idempotency=idempotency,",
          "request.session_id, state_json, None, idempotency=idempotency,"),),
        (f"{T_PATCH}::test_64_concurrent_patches_of_different_keys_all_land_each_on_the_version_it_read[single]",
         f"{T_PATCH}::test_a_patch_that_loses_every_attempt_is_a_409_after_a_bounded_number_of_them[None]"),
        "a PATCH writes its merged state over whatever version is current: a change made between "
        "its read and its write is lost"),
    # -- 8: Redis forgetting never forks a session --------------------------------
    mutant(
        "marker-not-written-on-create", 8, LUA_CREATE,
        (("return commit(CREATED, ", "set_marker = function() end\nreturn commit(CREATED, "),),
        (f"{T_MARKERS}::test_the_marker_holds_the_last_acknowledged_version_after_every_write[single]",),
        "a create leaves no version marker"),
    mutant(
        "marker-not-written-on-update", 8, LUA_UPDATE,
        (("return commit(UPDATED, ", "set_marker = function() end\nreturn commit(UPDATED, "),),
        (f"{T_MARKERS}::test_the_marker_holds_the_last_acknowledged_version_after_every_write[single]",),
        "an update leaves the marker at the previous version"),
    mutant(
        "marker-not-written-on-delete", 8, LUA_DELETE,
        (("return commit(DELETED, ", "set_marker = function() end\nreturn commit(DELETED, "),),
        (f"{T_MARKERS}::test_the_marker_holds_the_last_acknowledged_version_after_every_write[single]",),
        "a delete leaves the marker live: the id could come back"),
    mutant(
        "marker-ttl-shorter-than-the-session", 8, LUA_LIB,
        (("key_form('SET', key, value, 'EX', math.max(marker_ttl, ttl))",
          "key_form('SET', key, value, 'EX', marker_ttl)"),),
        (f"{T_STORE}::test_the_version_marker_outlives_its_session_even_when_configured_shorter[single]",),
        "a configured marker TTL shorter than the session's is used as is"),
    mutant(
        "marker-ttl-set-by-default", 8, LUA_LIB,
        (("if marker_ttl > 0 then", "if true then"),),
        (f"{T_MARKERS}::test_the_marker_holds_the_last_acknowledged_version_after_every_write[single]",),
        "markers get a TTL even with SESSION_MARKER_TTL=0: volatile-* eviction may take them"),
    mutant(
        "marker-key-form-not-read", 8, LUA_LIB,
        (("  local k = key_form('GET', key)\n", "  local k = false\n"),),
        (f"{T_FORMATS}::test_a_deletion_in_a_marker_key_stays_final[single]",
         f"{T_RULES}::test_a_read_while_postgresql_is_behind_the_marker_is_a_503_until_it_catches_up"
         "[previous-format]"),
        "a marker the previous release wrote (a key) is not read: after an upgrade a deleted id "
        "can be created again and recovery can serve an older version"),
    mutant(
        "marker-field-wins-over-a-newer-key", 8, LUA_LIB,
        (("  if not f or tonumber(string.match(k, '^(%d+)')) > tonumber(string.match(f, '^(%d+)')) "
          "then return k end\n", "  if not f then return k end\n"),),
        (f"{T_FORMATS}::test_during_a_rollout_the_higher_version_of_the_two_forms_is_the_marker[single]",),
        "during a rollout the field's older marker hides a deletion the previous release wrote "
        "in the key"),
    mutant(
        "marker-key-kept-on-write", 8, LUA_LIB,
        (("    redis.call('HSET', KEYS[2], id, value)\n    redis.call('DEL', key)\n",
          "    redis.call('HSET', KEYS[2], id, value)\n"),),
        (f"{T_FORMATS}::test_a_marker_key_is_read_as_the_marker_and_the_first_write_moves_it_into_the_hash"
         "[single]",),
        "a write leaves the previous release's marker key beside the field: two markers, and the "
        "memory the hash was to save"),
    mutant(
        "marker-field-kept-with-a-ttl", 8, LUA_LIB,
        (("    redis.call('HDEL', KEYS[2], id)\n", ""),),
        (f"{T_FORMATS}::test_with_a_marker_ttl_the_marker_is_a_key_and_the_field_goes[single]",),
        "with SESSION_MARKER_TTL the field stays beside the key: the marker outlives its TTL"),
    mutant(
        "migration-moves-over-a-newer-marker", 8, LUA_MIGRATE_MARKERS,
        (("    if f and tonumber(string.match(f, '^(%d+)')) >= tonumber(string.match(k, '^(%d+)')) then",
          "    if false then"),),
        (f"{T_MIGRATION}::test_a_migration_moves_every_marker_key_in_batches_and_a_second_run_finds_nothing",
         f"{T_MIGRATION}::test_a_migration_beside_live_writes_never_moves_a_marker_back"),
        "the migration writes a marker key over the newer version a write left in the hash: "
        "recovery may then serve an older version, a deleted session come back"),
    mutant(
        "migration-stops-on-a-moving-slot", 8, "sessionsync/marker_migration.py",
        (("            except (redis.exceptions.AskError, redis.exceptions.TryAgainError):\n",
          "            except ZeroDivisionError:\n"),),
        (f"{T_MIGRATION}::test_a_migration_during_a_resharding_skips_what_moves_and_says_to_run_again",),
        "migrate-markers during a resharding stops on the first key whose slot is moving (MOVED), "
        "a traceback half way through"),
    mutant(
        "migration-counts-no-moving-key-as-remaining", 8, "sessionsync/marker_migration.py",
        (("                             if ttl == -1 or isinstance(ttl, redis.ResponseError))\n",
          "                             if ttl == -1)\n"),),
        (f"{T_MIGRATION}::test_a_migration_during_a_resharding_skips_what_moves_and_says_to_run_again",),
        "a marker key whose slot is moving is not counted: migrate-markers reports nothing left "
        "and exits 0 while the key is still to move"),
    mutant(
        "migration-moves-markers-with-a-ttl", 8, LUA_MIGRATE_MARKERS,
        (("  elseif redis.call('PTTL', KEYS[i]) >= 0 then\n    kept = kept + 1\n", ""),),
        (f"{T_MIGRATION}::test_a_migration_moves_every_marker_key_in_batches_and_a_second_run_finds_nothing",),
        "the migration moves SESSION_MARKER_TTL's markers into the hash, where they never expire"),
    mutant(
        "create-ignores-the-marker", 8, LUA_WRITE,
        (("  local mv, mflag = marker()\n"
          "  if mv then return {mflag == 'D' and 'deleted' or 'exists', mv} end\n", ""),),
        (f"{T_STORE}::test_a_deleted_id_stays_unusable_after_its_tombstone_expired[single]",),
        "a create of an id whose key is gone but whose marker remains succeeds: the id is reused"),
    mutant(
        "restore-behind-check-removed", 8, LUA_RESTORE,
        (("if mv and mv > version then return {'behind', mv} end\n", ""),),
        (f"{T_MARKERS}::test_a_restore_behind_the_marker_is_refused_and_writes_nothing[single]",),
        "the restore script writes back a version older than the marker"),
    mutant(
        "recovery-python-check-removed", 8, SESSIONS,
        (("        if acknowledged > persisted_version:\n"
          "            raise RecoveryPending(session_id, acknowledged_version=acknowledged,\n"
          "                                  persisted_version=persisted_version)\n", ""),),
        (f"{T_RULES}::test_a_session_whose_creation_is_not_yet_persisted_is_a_503_not_a_404"
         "_when_its_key_is_gone",),
        "recovery does not compare the marker with PostgreSQL before reading it"),
    Mutant(
        "both-recovery-checks-removed", 8,
        (Edit(SESSIONS, "        if acknowledged > persisted_version:\n"
              "            raise RecoveryPending(session_id, acknowledged_version=acknowledged,\n"
              "                                  persisted_version=persisted_version)\n", ""),
         Edit(LUA_RESTORE, "if mv and mv > version then return {'behind', mv} end\n", "")),
        (f"{T_RULES}::test_a_read_while_postgresql_is_behind_the_marker_is_a_503_until_it_catches_up",),
        "recovery serves PostgreSQL's version even when Redis acknowledged a newer one"),
    mutant(
        "recovery-ignores-the-deleted-flag", 8, SESSIONS,
        (("        if marker is not None and marker.deleted:\n"
          "            raise SessionNotFound(session_id, deleted=True)\n", ""),),
        (f"{T_RULES}::test_a_deletion_not_yet_persisted_is_a_404_not_a_503_when_its_tombstone_is_gone",),
        "recovery looks a deleted session up in PostgreSQL instead of trusting the tombstone marker"),
    mutant(
        "lost-script-loaded-elsewhere", 8, STORE,
        (("            return self.client.eval(script.script, len(keys), *keys, *args)",
          "            script.sha = self.client.script_load(script.script)\n"
          "            return self.client.evalsha(script.sha, len(keys), *keys, *args)"),),
        (f"{T_STORE}::test_a_script_the_node_lost_runs_even_when_a_load_would_reach_another_node[single]",),
        "a script a node lost is loaded by a second command, which may reach another node"),
    mutant(
        "evicted-again-is-a-404", 8, SESSIONS,
        (("            raise ServiceUnavailable(f\"session {session_id!r} changed while it was being "
          "recovered; \"\n"
          "                                     \"retry\", dependency=\"redis\", retry_after_seconds=1)\n",
          "            raise SessionNotFound(session_id)\n"),),
        (f"{T_RULES}::test_a_session_evicted_again_while_another_reader_restored_it_is_a_503_not_a_404",),
        "a session evicted again while another reader restored it is reported as not found"),
    mutant(
        "epoch-check-skipped", 8, LUA_WRITE,
        (("  if e ~= ep then\n", "  if false then\n"),),
        (f"{T_EPOCHS}::test_a_write_on_a_value_of_another_epoch_needs_postgresql_s_version[single]",),
        "the write scripts accept a value of another epoch without PostgreSQL's version"),
    mutant(
        "verified-read-ignores-the-epoch", 8, LUA_GET,
        (("return {raw, e == epoch() and 1 or 0}", "return {raw, 1}"),),
        (f"{T_EPOCHS}::test_a_value_of_another_epoch_is_reported_to_a_verifying_read[single]",),
        "a verified read serves a value from before Redis went back in time"),
    mutant(
        "repair-overwrites-a-newer-version", 8, LUA_RESTORE,
        (("if ARGV[6] ~= 'repair' or v >= version then return {'exists'} end",
          "if ARGV[6] ~= 'repair' then return {'exists'} end"),),
        (f"{T_EPOCHS}::test_a_repair_overwrites_an_older_version_but_never_a_newer_one[single]",),
        "a repair replaces a newer version with PostgreSQL's older one"),
    mutant(
        "vouch-ignores-the-floor", 8, LUA_VOUCH,
        (("if v < tonumber(ARGV[2]) then return {'behind', v} end\n", ""),),
        (f"{T_EPOCHS}::test_vouching_stamps_the_current_epoch_and_keeps_the_ttl[single]",),
        "a value behind PostgreSQL is vouched for"),
    mutant(
        "settle-wait-removed", 8, SESSIONS,
        (("        _retry_later(left, f\"Redis failed over or restarted",
          "        _retry_later(0, f\"Redis failed over or restarted"),),
        (f"{T_RULES}::test_a_session_redis_may_hold_stale_waits_for_the_settle_time_before_postgresql_judges",),
        "PostgreSQL judges a stale value at once, before the queue had time to deliver"),
    mutant(
        "lost-session-hold-removed", 8, SESSIONS,
        (("            _retry_later(self.store.hold(session_id, self.settle_seconds),",
          "            _retry_later(0,"),),
        ("tests/integration/recovery/test_redis_forgets.py::"
         "test_a_session_whose_key_and_marker_were_lost_waits_for_its_change_still_in_the_queue",),
        "a session whose key and marker were lost is recovered before its queued change arrives"),
    mutant(
        "create-does-not-ask-postgresql", 8, SESSIONS,
        (("known_absent=self.durable is None)", "known_absent=True)"),),
        (f"{T_RULES}::test_a_create_of_an_id_only_postgresql_remembers_is_refused",),
        "a create of an id Redis forgot is accepted without asking PostgreSQL: the id is reused"),
    mutant(
        "epoch-change-not-reported", 11, SESSIONS,
        (("        if went_back and not self._reported_at + REPORT_INTERVAL_SECONDS > time.monotonic():\n",
          "        if False:\n"),),
        (f"{T_RULES}::test_a_session_redis_may_hold_stale_waits_for_the_settle_time_before_postgresql_judges",),
        "Redis going back in time (what may have lost acknowledged changes) is not logged"),
    # -- 17: a failover that lost nothing costs no settle time; one that lost writes does
    mutant(
        "continuity-trusted-without-evidence", 17, LUA_SETTLE,
        (("local proven = false\n", "local proven = replid2 ~= ''\n"),),
        (f"{T_EVIDENCE}::test_a_failover_to_a_replica_that_lacked_writes_is_not_trusted_and_waits",
         f"{T_EVIDENCE}::test_evidence_the_new_primary_contradicts_is_refused"),
        "a promoted replica that names the old history as its replid2 is trusted, writes lost or not"),
    mutant(
        "continuity-offset-unchecked", 17, LUA_SETTLE,
        (("if ARGV[i] == replid2 and second - 1 >= tonumber(ARGV[i + 1]) then",
          "if ARGV[i] == replid2 then"),),
        (f"{T_EVIDENCE}::test_evidence_the_new_primary_contradicts_is_refused",),
        "a history seen ending beyond what the promoted node holds counts as continued"),
    mutant(
        "continued-epoch-trusts-older-values", 17, LUA_SETTLE,
        (("return {ARGV[4] == from and 0 or left(), 3, ep}", "return {0, 3, ep}"),),
        (f"{T_EVIDENCE}::test_evidence_the_new_primary_contradicts_is_refused",),
        "a value from before an earlier, lossy failover skips the clock because the last one lost nothing"),
    mutant(
        "settle-answers-on-a-demoted-node", 17, LUA_SETTLE,
        (("if string.find(info, 'role:slave', 1, true) then", "if false then"),),
        (f"{T_EVIDENCE}::test_a_process_that_meets_the_failover_before_the_evidence_is_told_to_come_back_soon",),
        "a settle on a pooled connection to the demoted node answers there: its evidence is never heard"),
    mutant(
        "evidence-not-passed-on", 17, STORE,
        (("                self._spread_evidence(shown)\n", ""),),
        (f"{T_EVIDENCE}::test_a_process_that_did_not_see_the_failover_trusts_the_evidence_another_found",),
        "only the process that met the demoted node skips the settle time"),
    mutant(
        "ended-history-read-from-the-live-id", 17, REDIS_CLIENT,
        (("    if info.get(\"master_link_status\") != \"up\":\n", "    if True:\n"),),
        (f"{T_EVIDENCE}::test_a_demoted_node_reports_where_its_history_ended",),
        "a resynchronised demoted node's current (live) history is taken for the one that ended"),
    mutant(
        "cluster-moved-slot-asks-nobody", 17, REDIS_CLIENT,
        (("        manager.move_slot = moved  # type: ignore[method-assign,assignment]\n", ""),),
        (f"{T_CLUSTER_EVIDENCE}::test_a_planned_cluster_failover_is_proven_to_have_lost_nothing_and_costs_no_settle_time[slot-moved]",),
        "a cluster client that moves a slot after MOVED does not ask the demoted master where its "
        "history ended: a planned CLUSTER FAILOVER costs the whole settle time"),
    mutant(
        "cluster-reloaded-map-asks-nobody", 17, REDIS_CLIENT,
        (("        manager.initialize = reloaded  # type: ignore[method-assign]\n", ""),),
        (f"{T_CLUSTER_EVIDENCE}::test_a_planned_cluster_failover_is_proven_to_have_lost_nothing_and_costs_no_settle_time[map-reloaded]",),
        "a cluster client that reloads its map after MOVED does not ask the masters it demoted"),
    mutant(
        "cluster-evidence-not-passed-on", 17, STORE,
        (("pipe.execute_command(\"EVALSHA\", self._settle.sha, 1,", "pipe.evalsha(self._settle.sha, 1,"),),
        (f"{T_CLUSTER_EVIDENCE}::test_a_process_that_did_not_see_the_cluster_failover_trusts_the_evidence_another_found",),
        "on a cluster the evidence is not passed on (its pipeline refuses evalsha): only the process "
        "that met the demoted master skips the settle time"),
    mutant(
        "wait-for-replicas-skipped", 17, STORE,
        (("            if self.wait_replicas:\n                return self._run_replicated(",
          "            if False:\n                return self._run_replicated("),),
        (f"{T_WAIT}::test_an_acknowledged_write_is_on_the_replica_when_it_is_acknowledged",
         f"{T_WAIT}::test_a_write_no_replica_confirms_is_a_503_of_unknown_outcome_committed_on_the_primary"),
        "REDIS_WAIT_REPLICAS is set but a write is acknowledged before a replica has it"),
    mutant(
        "unconfirmed-write-acknowledged", 17, STORE,
        (("        if acked is not None and acked < self.wait_replicas:\n",
          "        if False:\n"),),
        (f"{T_WAIT}::test_a_write_no_replica_confirms_is_a_503_of_unknown_outcome_committed_on_the_primary",),
        "a write no replica confirmed in time is answered 200, as if a failover could not lose it"),
    # -- 5: a dependency outage is a fast 503 ------------------------------------
    mutant(
        "redis-connection-errors-not-503", 5, REDIS_ERRORS,
        (("    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError,\n",
          "    if isinstance(exc, (redis.TimeoutError,\n"),),
        (f"{T_OUTAGE}::test_a_stopped_redis_makes_the_store_raise_service_unavailable_at_once",),
        "a refused Redis connection escapes as a 500"),
    mutant(
        "write-resent-after-a-connection-error", 5, REDIS_CLIENT,
        (("supported_errors=NOT_RUN_ERRORS))",
          "supported_errors=(*NOT_RUN_ERRORS, redis.ConnectionError, redis.TimeoutError)))"),),
        (f"{T_OUTAGE}::test_a_hung_redis_makes_the_store_raise_service_unavailable_after_one_timeout",),
        "a script that timed out is sent again: a write may apply twice, and the 503 waits twice"),
    mutant(
        "postgres-closed-while-idle-unnoticed", 5, PG_CONNECTION,
        (("if conn is not None and not conn.closed and not conn.broken and not _closed_by_server(conn):",
          "if conn is not None and not conn.closed and not conn.broken:"),),
        (f"{T_PERSISTENCE}::test_a_connection_the_server_closed_while_idle_is_replaced_before_the_next_read",),
        "a warm function whose PostgreSQL connection the server closed while it was frozen (an "
        "idle timeout of RDS Proxy) answers its next read with a 503"),
    mutant(
        "pooled-connection-prepares-statements", 5, PG_CONNECTION,
        (('        extra["prepare_threshold"] = None\n', "        pass\n"),),
        (f"{T_PGBOUNCER}::test_the_api_and_two_consumers_share_two_server_connections_past_psycopg_s_"
         "prepare_threshold",),
        "through a transaction pooler, psycopg's sixth execution prepares a statement that another "
        "client's transaction meets on the shared server connection: errors, retried batches"),
    # -- 6: one hash slot per script -------------------------------------------------
    mutant(
        "hash-tag-dropped", 6, KEYS,
        (("return \"ss:{%04d}\" % bucket", "return \"ss:%04d\" % bucket"),),
        (f"{T_STORE}::test_every_key_of_a_script_is_in_one_hash_slot",),
        "a session's keys spread over hash slots: its scripts fail on a cluster (CROSSSLOT)"),
    mutant(
        "marker-key-form-refusal-not-tryagain", 6, LUA_LIB,
        (("error({err = 'TRYAGAIN ' .. r.err})", "error(r)"),),
        (f"{T_FAILOVER}::test_a_write_during_a_slot_migration_commits_whole_or_not_at_all[update]",),
        "the marker key form refused during a slot migration is a script error (a 500), not a "
        "TRYAGAIN the cluster client tries again"),
    mutant(
        "marker-written-after-the-session", 6, LUA_WRITE,
        (("  set_marker(v .. '|' .. flag, MARKER_TTL, ttl)\n"
          "  redis.call('SET', KEYS[1], head(v, created, NOW_ISO, ttl, flag) .. ep .. o .. '|' .. state, "
          "'EX', ttl)\n",
          "  redis.call('SET', KEYS[1], head(v, created, NOW_ISO, ttl, flag) .. ep .. o .. '|' .. state, "
          "'EX', ttl)\n"
          "  set_marker(v .. '|' .. flag, MARKER_TTL, ttl)\n"),),
        (f"{T_FAILOVER}::test_a_write_during_a_slot_migration_commits_whole_or_not_at_all[update]",),
        "a write sets the session before its marker: a slot migration refusing the marker's key "
        "form leaves the new version in Redis without its event (never persisted) and a 500"),
    mutant(
        "marker-field-written-before-the-key-form", 6, LUA_LIB,
        (("    key_form('EXISTS', key)\n", ""),
         ("    redis.call('DEL', key)\n", "    key_form('DEL', key)\n")),
        (f"{T_FAILOVER}::test_a_write_during_a_slot_migration_commits_whole_or_not_at_all[update]",),
        "the marker field is written before the key form is reached: a slot migration refusing "
        "the DEL leaves a marker ahead of the session and of PostgreSQL"),
    mutant(
        "marker-key-deleted-before-the-field", 5, LUA_LIB,
        (("    key_form('EXISTS', key)\n    redis.call('HSET', KEYS[2], id, value)\n"
          "    redis.call('DEL', key)\n",
          "    key_form('DEL', key)\n    redis.call('HSET', KEYS[2], id, value)\n"),),
        ("tests/integration/redis/test_redis_outage.py::"
         "test_a_full_redis_answers_writes_with_503_and_still_serves_reads",),
        "a write's first command is the marker key form's DEL, a write Redis allows when full: "
        "after it the script runs past maxmemory and a full Redis takes every write"),
    mutant(
        "shake-strips-comments-inside-strings", 6, SCRIPTS_INIT,
        (("    return _COMMENT.sub(lambda m: m.group(1) or \"\", text)\n",
          "    return re.sub(r\"--[^\\n]*\", \"\", text)\n"),),
        (f"{T_SCRIPTS}::test_a_call_after_a_double_dash_in_a_string_keeps_its_function",),
        "a '--' inside a string hides the calls after it on its line: their function is left out "
        "of the script, which fails (a nil global) on that path only"),
    mutant(
        "acl-without-tenant-keys", 7, "infra/stacks/cache.yaml",
        (("~ss:* ~so:* ~st:* &session-updates*", "~ss:* ~so:* &session-updates*"),),
        ("tests/integration/redis/test_redis_acl.py::test_the_app_user_keeps_a_tenant_s_count",),
        "the deployed app user may not touch a tenant's count (st:{<tenant>}:live): with "
        "TENANT_MAX_SESSIONS every create is refused (NOPERM)"),
    mutant(
        "shake-keeps-no-callee-of-a-kept-function", 6, SCRIPTS_INIT,
        (("                todo.append(_code(text))\n", "                pass\n"),),
        ("tests/integration/store/test_scripts_whole.py::"
         "test_every_function_a_script_calls_is_defined_before_the_call[UPDATE_SCRIPT]",),
        "a function only a kept function calls is left out: the script fails (a nil global) "
        "when that path runs"),
    mutant(
        "shake-takes-a-one-line-function-unchecked", 6, SCRIPTS_INIT,
        (("    if list(functions) != _DEFINED.findall(prelude):\n", "    if False:\n"),),
        (f"{T_SCRIPTS}::test_a_one_line_prelude_function_is_refused_rather_than_take_the_next_one_with_it",),
        "a one-line prelude function takes the functions after it out of every script that does "
        "not call it, silently"),
    # -- 9: a failover heals by itself ------------------------------------------------
    mutant(
        "not-run-replies-not-retried", 9, REDIS_CLIENT,
        (("supported_errors=NOT_RUN_ERRORS))", "supported_errors=()))"),),
        (f"{T_FAILOVER}::test_a_warm_store_writes_at_once_on_the_new_primary_after_a_failover",),
        "a pooled connection stuck on the demoted node answers READONLY until it is dropped"),
    mutant(
        "stale-hot-connection-kept", 9, REDIS_CLIENT,
        (("            _drop_if_dead(conn)\n", "            pass\n"),),
        (f"{T_HOT}::test_a_write_after_the_server_closed_the_warm_connection_goes_through_on_a_new_one",),
        "a warm connection the server closed (restart, failover, idle timeout) fails the next "
        "write with a 503, outcome unknown, instead of reconnecting first"),
    mutant(
        "hot-connection-shared-between-threads", 9, REDIS_CLIENT,
        (("self._hot_lock.acquire(blocking=False))", "(self._hot_lock.acquire(blocking=False) or True))"),
         ("            self._hot_lock.release()\n",
          "            if self._hot_lock.locked():\n                self._hot_lock.release()\n")),
        (f"{T_HOT}::test_threads_sharing_one_client_each_get_their_own_replies",),
        "threads of the local server interleave commands on one connection and read each "
        "other's replies"),
    mutant(
        "hot-connection-kept-across-fork", 9, REDIS_CLIENT,
        (("        os.register_at_fork(after_in_child=lambda: (forget := after_fork()) and forget())\n",
          "        del after_fork\n"),),
        (f"{T_HOT}::test_a_forked_child_talks_on_a_connection_of_its_own",),
        "a forked child sends on its parent's socket: the two read each other's replies"),
    # -- 3: sync_sessions holds the highest version ------------------------------
    mutant(
        "upsert-version-guard-removed", 3, PERSISTENCE,
        (("        WHERE s.version < EXCLUDED.version\n", ""),),
        (f"{T_PERSISTENCE}::test_a_deletion_is_final_even_when_older_versions_arrive_after_it",),
        "an older event delivered late overwrites sync_sessions"),
    # -- 2: every acknowledged write exactly once in sync_events -------------------
    mutant(
        "conflicts-counted-as-duplicates", 2, PERSISTENCE,
        (("        failures = _conflict_failures(events, conflicts)\n",
          "        failures = {}\n"),),
        (f"{T_CONFLICTS}::test_two_different_events_for_one_version_in_one_batch_make_one_row"
         "_and_one_conflict",
         f"{T_CONFLICTS}::test_an_event_that_differs_only_in_its_state_is_a_conflict_not_a_duplicate"),
        "a second write under a persisted version vanishes as a duplicate"),
    mutant(
        "conflict-check-ignores-the-state", 2, PERSISTENCE,
        (("   OR e.state IS DISTINCT FROM t.state::jsonb\n", ""),),
        (f"{T_CONFLICTS}::test_an_event_that_differs_only_in_its_state_is_a_conflict_not_a_duplicate",),
        "CONFLICTS_SQL compares type and time only: same time, other state is a 'duplicate'"),
    mutant(
        "first-of-each-version-dropped", 2, PERSISTENCE,
        (("        unique, later = _first_of_each_version(events)\n",
          "        unique, later = list(range(len(events))), []\n"),),
        (f"{T_CONFLICTS}::test_two_different_events_for_one_version_in_one_batch_make_one_row"
         "_and_one_conflict",),
        "two events of one (session, version) in one batch go into one statement"),
    mutant(
        "outbox-entry-removed-before-the-send", 2, PRODUCER,
        (("        try:\n            self.sqs.send_message(",
          "        self._ack([result.event_id])\n        try:\n            self.sqs.send_message("),),
        (f"{T_SHIP}::test_a_send_sqs_refuses_leaves_the_outbox_entry_for_the_relay",),
        "the outbox entry is acknowledged before SQS took the message: a failed send is lost"),
    mutant(
        "outbox-ack-error-escapes", 2, PRODUCER,
        (("            log.warning(\"outbox ack failed; a duplicate will be sent\",",
          "            raise\n            log.warning(\"outbox ack failed; a duplicate will be sent\","),),
        (f"{T_SHIP}::test_an_outbox_ack_that_fails_after_sqs_took_the_message_is_not_an_error",),
        "an outbox ack that fails after SQS took the message raises from the producer"),
    mutant(
        "relay-acks-before-send", 2, PRODUCER,
        (("            try:\n                reply = self.sqs.send_message_batch(",
          "            self._ack([eid for eid, _ in batch])\n"
          "            try:\n                reply = self.sqs.send_message_batch("),),
        (f"{T_RELAY}::test_changes_sqs_refuses_stay_in_the_outbox_and_the_relay_ships_them_once_sqs"
         "_takes_them",),
        "the relay acks outbox entries before SQS took them: a refused send loses the changes"),
    mutant(
        "relay-deaf-to-wakeups", 2, OUTBOX,
        (("        data = self.wakeups.raw(timeout)\n",
          "        self.wakeups.raw(timeout)\n        data = None\n"),),
        (f"{T_RELAY}::test_a_committed_write_wakes_the_relay_which_ships_it_without_a_sweep",),
        "the relay ignores the change events: a write waits for a sweep (seconds), not ms"),
    mutant(
        "relay-waits-for-its-lanes", 2, OUTBOX,
        (("        self.in_lanes.append(self.lanes.put(events))\n",
          "        self.in_lanes.append(self.lanes.put(events))\n        self.in_lanes[-1].done.wait()\n"),),
        (f"{T_RELAY}::test_a_slow_send_holds_only_its_own_lane_while_the_relay_ships_the_other_sessions",),
        "the relay reads on only once every lane sent: one send stuck in SQS's tail holds every change"),
    mutant(
        "relay-lane-sends-past-a-refusal", 2, OUTBOX,
        (("                    self.failed[lane] = True\n", "                    pass\n"),),
        (f"{T_UNITS}::test_a_relay_lane_stops_at_the_first_chunk_sqs_refused_until_it_is_reset",),
        "a lane whose send SQS refused sends the session's later changes: they reach SQS ahead of it"),
    mutant(
        "relay-backlog-waits-a-sweep-interval", 2, OUTBOX,
        (("        if result.more:\n            self.swept = float(\"-inf\")\n", ""),),
        (f"{T_UNITS}::test_a_sweep_stopped_by_its_budget_with_a_backlog_left_is_followed_by_the_next_at_once",),
        "a backlog is drained a sweep budget at a time with a sweep interval between: slower by a sixth"),
    mutant(
        "relay-lease-ignores-its-holder", 2, LUA_LEASE,
        (("  if not holder or holder == token then", "  if true then"),),
        (f"{T_RELAY}::test_a_relay_that_died_holding_the_lease_is_taken_over_when_it_expires",
         f"{T_RELAY}::test_two_relays_at_once_one_holds_the_lease_and_the_later_one_takes_over_by"
         "_hand_over"),
        "a relay takes the lease whoever holds it: every scheduled run relays at once"),
    # -- 4: nothing silently dropped: the DLQ with its reason -------------------------
    mutant(
        "operator-commands-on-the-request-budget", 4, "sessionsync/cli/_common.py",
        (("        runtime.use_aws_budget(OPERATOR_AWS_BUDGET)\n", "        pass\n"),),
        ("tests/integration/pipeline/test_dlq.py::test_an_operator_command_waits_out_an_sqs_slower_than_a"
         "_request_s_budget",),
        "an operator's dlq list gives up as a request would when SQS answers in more than 3 s"),
    mutant(
        "dlq-messages-without-their-reasons", 4, DEAD_LETTERS,
        (("\"MessageAttributes\": dead_letter_attributes(letter, now=now)", "\"MessageAttributes\": {}"),),
        (f"{T_UNITS}::test_the_consumer_reports_retryable_failures_and_dead_letters_permanent_ones",),
        "dead letters are sent without the attributes that say why"),
    mutant(
        "fifo-redrive-deduplicated-by-event-id", 4, "sessionsync/dlq.py",
        (('return {"MessageGroupId": group, "MessageDeduplicationId": message.message_id}',
          'return {"MessageGroupId": group, "MessageDeduplicationId": event_id or message.message_id}'),),
        ("tests/integration/pipeline/test_fifo_queue.py::"
         "test_a_redrive_to_the_fifo_queue_is_not_dropped_as_a_duplicate_of_the_original_send",),
        "a FIFO redrive reuses the event id, which SQS drops as a duplicate of the first send"),
    mutant(
        "dlq-reason-code-dropped", 4, DEAD_LETTERS,
        (("ERROR_CODE: error.sqlstate or reason or error.code,",
          "ERROR_CODE: error.sqlstate or error.code,"),),
        (f"{T_UNITS}::test_a_malformed_message_has_its_reason_as_error_code_and_no_empty_attributes",),
        "a malformed message's reason is missing from its dead letter"),
    mutant(
        "retryable-failures-not-retried", 4, CONSUMER,
        (("                else:\n                    report.retry.append(record[\"messageId\"])\n",
          "                else:\n                    pass\n"),),
        (f"{T_UNITS}::test_the_consumer_reports_retryable_failures_and_dead_letters_permanent_ones",),
        "a record PostgreSQL failed for a passing reason is deleted as if persisted"),
    mutant(
        "unsent-dead-letters-dropped", 4, CONSUMER,
        (("                if message_id in unsent:\n", "                if False:\n"),),
        (f"{T_UNITS}::test_the_consumer_keeps_poison_on_the_main_queue_when_the_dlq_refuses_it",),
        "poison the DLQ refused is counted as dead-lettered and deleted"),
    # -- 14: a retried keyed write is applied once and answered as it was ------------
    mutant(
        "idempotency-record-written-but-not-checked", 14, LUA_WRITE,
        (("  if not KEYS[5] then return nil end\n", "  if true then return nil end\n"),),
        (f"{T_IDEMPOTENCY}::test_a_keyed_update_retried_after_another_write_returns_its_own_outcome"
         "_not_a_conflict[single]",),
        "the scripts record a keyed write but never look the key up: a retry gets a 409"),
    Mutant(
        "idempotency-record-written-after-the-script", 14,
        (Edit(LUA_WRITE,
              "  if KEYS[5] then redis.call('SET', KEYS[5], ARGV[11] .. '|' .. ev, 'EX', ARGV[12]) end\n",
              ""),
         Edit(STORE, "        if status == b\"ok\":\n            return _result(reply[1].decode())\n",
              "        if status == b\"ok\":\n"
              "            if idempotency is not None:\n"
              "                self.client.set(idempotency_key(session_id, idempotency.key),\n"
              "                                idempotency.fingerprint + '|' + reply[1].decode(),\n"
              "                                ex=self.idempotency_ttl)\n"
              "            return _result(reply[1].decode())\n")),
        (f"{T_IDEMPOTENCY}::test_a_keyed_update_whose_answer_was_cut_off_is_replayed_on_a_new_connection",),
        "the record is written by the caller once the script answered: a lost answer leaves none"),
    mutant(
        "idempotency-record-without-ttl", 14, LUA_WRITE,
        (("redis.call('SET', KEYS[5], ARGV[11] .. '|' .. ev, 'EX', ARGV[12])",
          "redis.call('SET', KEYS[5], ARGV[11] .. '|' .. ev)"),),
        (f"{T_IDEMPOTENCY}::test_the_record_lives_in_the_sessions_slot_and_expires_after_a_day_at_least[single]",),
        "records never expire: they pile up, and volatile-* eviction cannot take them"),
    mutant(
        "patch-record-looked-up-after-the-read", 14, SESSIONS,
        (("        if idempotency is not None:\n"
          "            done = self.store.recorded(request.session_id, idempotency)\n",
          "        if False:\n"
          "            done = self.store.recorded(request.session_id, idempotency)\n"),),
        ("tests/functional/test_idempotency_http.py::"
         "test_a_patch_retried_with_its_key_is_not_merged_again_even_with_its_if_match_now_stale",),
        "a keyed PATCH reads before it looks its record up: its retry fails its If-Match (412)"),
    mutant(
        "idempotency-record-name-ambiguous", 14, KEYS,
        (('return f"{bucket_tag(bucket_of(session_id))}:k:{session_id}|{key}"',
          'return f"{bucket_tag(bucket_of(session_id))}:k:{session_id}:{key}"'),),
        (f"{T_IDEMPOTENCY}::test_keys_of_two_sessions_whose_ids_and_keys_join_alike_are_two_records[single]",),
        "the record name joins id and key with ':': sessions x and x:1 share a record (a spurious 422)"),
    mutant(
        "idempotency-previous-release-record-unread", 14, LUA_WRITE,
        (("  if not rec and KEYS[6] then\n", "  if false then\n"),),
        (f"{T_IDEMPOTENCY}::test_a_record_of_the_previous_release_is_still_replayed_and_only_for_its_own"
         "_request[single]",),
        "a write recorded by the previous release is not replayed to its retry after the upgrade"),
    mutant(
        "idempotency-previous-release-record-of-another-session", 14, LUA_WRITE,
        (("    if rec and string.sub(rec, 1, 64) ~= ARGV[11] then rec = nil end\n", ""),),
        (f"{T_IDEMPOTENCY}::test_a_record_of_the_previous_release_is_still_replayed_and_only_for_its_own"
         "_request[single]",),
        "the old, ambiguous name counts whoever's record it holds: another session's write gets a 422"),
    # -- 10: safe with or without ReportBatchItemFailures --------------------------------
    mutant(
        "handled-records-not-deleted-before-raising", 10, CONSUMER,
        (("            if handled:\n                self.source.delete(handled)\n",
          "            if handled:\n                pass\n"),),
        (f"{T_UNITS}::test_the_consumer_reports_retryable_failures_and_dead_letters_permanent_ones",),
        "a raising consumer leaves its handled records on the queue"),
    mutant(
        "consumer-returns-instead-of-raising", 10, CONSUMER,
        (("            raise BatchIncomplete(report)\n", "            return report.response()\n"),),
        (f"{T_UNITS}::test_the_consumer_reports_retryable_failures_and_dead_letters_permanent_ones",),
        "without ReportBatchItemFailures the mapping deletes records that must be retried"),
    # -- 15: an owner's revoke-all leaves none of its sessions --------------------------
    mutant(
        "revoke-all-skips-ids-not-created-yet", 15, OWNERS,
        (("        result = _block(service, owner_id, session_id)\n"
          "        if result is not None:\n            return result\n",
          "        return \"gone\"\n"),),
        (f"{T_OWNERS}::test_an_id_registered_whose_create_has_not_run_is_tombstoned_and_its_create_then_fails"
         "[cluster]",
         f"{T_OWNERS}::test_no_session_registered_before_a_revoke_all_survives_creates_racing_it[cluster]"),
        "a revoke-all passes over ids whose create has not run: the late create brings a session back"),
    mutant(
        "owner-listing-trusts-the-index", 15, OWNERS,
        (("            if session is not None and (session.deleted or session.owner_id != owner_id):\n",
          "            if session is not None and session.deleted:\n"),),
        (f"{T_OWNERS}::test_an_index_entry_of_an_id_another_owner_holds_is_neither_listed_nor_deleted"
         "[cluster]",),
        "the listing serves an id of the index without checking the session's owner"),
    mutant(
        "revoke-all-takes-a-new-session-for-an-expired-one", 15, OWNERS,
        (("            if store.peek([session_id])[0] is not None:\n                continue\n", ""),),
        (f"{T_OWNERS}::test_a_create_landing_between_the_revoke_all_s_reads_of_key_and_marker_is_deleted"
         "[single]",),
        "a create that lands between the revoke-all's reads of key and marker is skipped as expired"),
    mutant(
        "revoke-all-trusts-redis-alone", 15, OWNERS,
        (("    durable = service.durable\n", "    durable = None\n"),),
        (f"{T_OWNERS}::test_a_session_redis_forgot_with_its_index_entry_is_found_in_postgresql_and_deleted",),
        "a revoke-all misses an owned session Redis forgot with its index entry: it comes back "
        "from PostgreSQL"),
    mutant(
        "revoke-all-chases-creates-begun-after-it", 15, OWNERS,
        (("    while ids := store.owner_ids(owner_id, count=REVOKE_BATCH, revoking=True):\n",
          "    while ids := store.owner_ids(owner_id, count=REVOKE_BATCH):\n"),),
        (f"{T_OWNERS}::test_a_revoke_all_ends_exactly_the_sessions_created_before_it_while_creates_go_on"
         "[single]",),
        "a revoke-all walks the live index: it deletes sessions created after it began and "
        "cannot finish while creates go on"),
    mutant(
        "revoke-begin-takes-no-snapshot", 15, f"{REDIS}/scripts/revoke_begin.lua",
        (("redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[1], 'AGGREGATE', 'MIN')\n", ""),),
        (f"{T_OWNERS}::test_revoke_all_deletes_each_session_of_the_owner_and_says_how_many[single]",),
        "a revoke-all takes none of the ids registered before it: their sessions survive it"),
    mutant(
        "revoke-all-walks-ended-rows", 15, PERSISTENCE,
        (("       AND coalesce(expires_at, updated_at + make_interval(secs => ttl_seconds))\n"
          "           >= %(ended_before)s::timestamptz\n", ""),),
        (f"{T_OWNERS}::test_expired_rows_do_not_starve_a_live_session_redis_forgot_that_sorts_after_them",),
        "a revoke-all spends its budget on rows whose lifetime ended: a live session Redis forgot, "
        "sorting after them, is reached late or never"),
    mutant(
        "revoke-all-ends-sessions-created-after-it", 15, PERSISTENCE,
        (("NOT deleted AND NOT expired AND created_at < %(created_before)s::timestamptz\n",
          "NOT deleted AND NOT expired\n"),),
        (f"{T_OWNERS}::test_a_session_created_while_the_revoke_all_walks_postgresql_is_left_alone",),
        "the walk of PostgreSQL deletes a session created after the revoke-all began"),
    mutant(
        "revoke-all-forgets-its-place-in-postgresql", 15, OWNERS,
        (("                store.owner_revoke_position(owner_id, sid)\n",
          "                store.owner_revoke_position(owner_id, None)\n"),),
        (f"{T_OWNERS}::test_a_revoke_all_out_of_time_in_postgresql_goes_on_where_it_stopped",),
        "a revoke-all out of time starts PostgreSQL's walk over: it never gets past the first rows"),
    mutant(
        "revoke-all-blind-to-redis-going-back", 15, OWNERS,
        (("        moved = store.owner_revoke_begin(owner_id, only_epoch=True)[2] != epoch\n",
          "        moved = False\n"),),
        (f"{T_OWNERS}::test_a_revoke_all_during_which_redis_went_back_in_time_answers_remaining",),
        "a revoke-all whose set Redis lost (a failover, a restart) answers that none remain"),
    mutant(
        "owner-page-reads-every-value", 15, OWNERS,
        (("        fits = _fitting(store.value_sizes(ids), max_bytes - size, at_least_one=not found)\n",
          "        fits = len(ids)\n"),),
        (f"{T_OWNERS}::test_a_page_of_large_sessions_stays_under_the_byte_budget_and_the_cursor_pages_on"
         "[single]",),
        "an owner's page reads every value up to its limit (500 large states: ~128 MiB) before "
        "cutting the response"),
    mutant(
        "owner-page-unbounded-by-bytes", 15, OWNERS,
        (("                if found and size > max_bytes:\n", "                if False:\n"),),
        (f"{T_OWNERS}::test_a_page_of_large_sessions_stays_under_the_byte_budget_and_the_cursor_pages_on"
         "[single]",),
        "an owner's page of large sessions passes what a Lambda response carries (a 502)"),
    # -- 16: a session ends when its lifetime ends ----------------------------------------
    # Recovery refuses an ended lifetime twice: the service before it restores
    # (no script call) and the restore script on Redis's clock (a lifetime
    # that ends between the two).  Either alone keeps the promise, so the
    # mutant takes both away; restore-revives-an-ended-lifetime the script's alone.
    Mutant(
        "recovery-serves-an-expired-session", 16,
        (Edit(SESSIONS, "        if persisted.expired_at(self.store.clock()):\n", "        if False:\n"),
         Edit(LUA_RESTORE, "if left and left <= 0 then\n", "if ARGV[7] == 'E' then\n"),
         Edit(LUA_RESTORE, "if left then\n", "if left and left > 0 then\n")),
        (f"{T_LIFE}::test_a_session_whose_lifetime_ended_is_session_expired_on_get_put_delete_and_touch",),
        "recovery brings back a session whose lifetime ended, as if Redis had lost it"),
    mutant(
        "sweep-expires-ahead-of-postgresql", 16, LUA_EXPIRE,
        (("  if mv > pg then return {'ahead', mv} end\n", ""),),
        (f"{T_LIFE}::test_a_write_racing_the_sweep_is_never_lost_and_never_forks_a_version",),
        "the sweep expires a session whose newer write is still in the queue"),
    mutant(
        "sweep-expires-a-live-key", 16, LUA_EXPIRE,
        (("if redis.call('EXISTS', KEYS[1]) == 1 then return {'alive', 0} end\n", ""),),
        (f"{T_LIFE}::test_a_session_kept_alive_only_by_reads_ends_when_redis_loses_it",
         f"{T_LIFE}::test_the_sweep_leaves_a_live_session_and_a_deleted_one_alone"),
        "the sweep expires a session Redis still holds (kept alive by reads, or deleted)"),
    mutant(
        "sweep-final-marker-not-one-version-on", 16, LUA_EXPIRE,
        (("set_marker(v .. '|E', MARKER_TTL, ttl)\n",
          "set_marker(pg .. '|E', MARKER_TTL, ttl)\n"),),
        (f"{T_LIFE}::test_two_sweeps_at_once_record_exactly_one_session_expired_per_session",),
        "the sweep's final marker keeps PostgreSQL's version: a second sweep expires the session again"),
    mutant(
        "restore-gives-a-whole-new-lifetime", 16, LUA_RESTORE,
        (("  redis.call('SET', KEYS[1], value, 'PX', left)\n",
          "  redis.call('SET', KEYS[1], value, 'EX', ttl)\n"),),
        (f"{T_LIFE}::test_a_session_recovered_after_an_eviction_keeps_what_was_left_of_its_lifetime",
         f"{T_LIFE}::test_a_repair_after_a_failover_keeps_what_was_left_of_the_lifetime"),
        "a session recovered or repaired from PostgreSQL gets its whole TTL again: it outlives its lifetime"),
    mutant(
        "restore-revives-an-ended-lifetime", 16, LUA_RESTORE,
        (("if left and left <= 0 then\n", "if ARGV[7] == 'E' then\n"),
         ("if left then\n", "if left and left > 0 then\n")),
        (f"{T_LIFE}::test_a_restore_once_the_lifetime_ended_writes_nothing_and_answers_session_expired",
         f"{T_LIFE}::test_a_repair_after_a_failover_never_revives_a_session_whose_lifetime_ended"),
        "the restore script writes back a session whose lifetime ended"),
    mutant(
        "repair-writes-an-expiry-as-a-live-session", 16, STORE,
        (('ends = "E" if session.expired else "" if session.deleted else session.expires_ms',
          'ends = "" if session.deleted else session.expires_ms'),),
        (f"{T_LIFE}::test_a_repair_after_a_failover_puts_an_expiry_back_as_final_not_as_a_live_session",),
        "a repair writes PostgreSQL's session_expired back as a live value (state null) that a PUT revives"),
    mutant(
        "expired-event-without-its-end", 16, LUA_EXPIRE,
        (("return {'ok', announce(EXPIRED, v, ARGV[13], ttl, 'null', o, ARGV[14])}",
          "return {'ok', announce(EXPIRED, v, ARGV[13], ttl, 'null', o)}"),),
        (f"{T_LIFE}::test_a_session_expired_event_keeps_the_end_that_passed_not_the_sweep_s_time"
         "_plus_the_ttl",),
        "the sweep's session_expired leaves its end out as a write's event does: PostgreSQL "
        "records the sweep's time + the TTL, later than the lifetime that ended"),
    mutant(
        "write-time-goes-back", 16, LUA_WRITE,
        (("  if u > NOW_ISO then NOW_ISO = u end\n", ""),),
        (f"{T_LIFE}::test_a_write_that_read_its_clock_before_the_last_write_never_moves_the_lifetime_back"
         "[update]",),
        "a write stamped with a clock read before the previous version committed ends the session early"),
    mutant(
        "sweep-restarts-from-the-first-id", 16, EXPIRY,
        (('start = "" if dry_run else self.store.sweep_position()', 'start = ""'),),
        (f"{T_LIFE}::test_candidates_the_sweep_skips_cannot_starve_the_ids_after_them",
         f"{T_LIFE_UNITS}::test_the_sweep_goes_on_where_its_last_run_stopped_and_round_to_the_first_id"),
        "every sweep run starts from the first id: skipped candidates early in id order starve the rest"),
    # -- 13: the audit retention's purge ------------------------------------------------
    mutant(
        "purge-lock-held-by-the-session", 13, PG_RETENTION,
        (('LOCK_SQL = "SELECT pg_try_advisory_xact_lock(%s)"',
          'LOCK_SQL = "SELECT pg_try_advisory_lock(%s)"'),),
        (f"{T_PGBOUNCER}::test_the_purge_runs_again_and_again_through_the_pooler_never_busy_and_"
         "leaves_no_lock",),
        "the purge's lock outlives its batch on a pooled server connection: later purges find "
        "it held and do nothing"),
    mutant(
        "purge-takes-the-latest-row", 13, PG_RETENTION,
        (("    WHERE c.version < s.version\n", "    WHERE c.version <= s.version\n"),),
        ("tests/integration/pipeline/test_retention.py::test_a_latest_row_is_kept_however_old_a_deletion_"
         "included_so_its_history_is_never_empty",
         "tests/model/test_model.py::test_the_retention_purge_leaves_every_session_its_latest_row"),
        "the purge removes a session's latest row with the ones it replaced: a failover's re-issued "
        "version is persisted as new, and the history of a session that stopped changing is empty"),
    # -- 18: slow clients cannot hold the local server ----------------------------------
    mutant(
        "serve-read-deadline-per-recv", 18, SERVE_LIMITS,
        (("            self._sock.settimeout(self._time_left())\n            return self._sock.recv_into",
          "            self._sock.settimeout(self.span)\n            return self._sock.recv_into"),),
        (f"{T_SERVE}::test_clients_dribbling_a_request_byte_by_byte_are_cut_at_the_request_deadline_"
         "with_a_408",),
        "each read waits the whole request timeout again: a client sending a byte now and then "
        "holds its thread for ever"),
    mutant(
        "serve-connections-uncapped", 18, SERVE_LIMITS,
        (("threading.BoundedSemaphore(limits.max_connections)", "threading.BoundedSemaphore(1 << 16)"),),
        (f"{T_SERVE}::test_connections_beyond_the_cap_get_a_503_with_retry_after_and_add_no_thread",),
        "every connection gets a thread: slow clients grow the server's threads and memory without bound"),
    mutant(
        "serve-idle-keepalive-not-reclaimed", 18, SERVE_LIMITS,
        (("            if not self._idle:\n                return False",
          "            if True:\n                return False"),),
        (f"{T_SERVE}::test_idle_keep_alive_connections_give_their_places_to_new_clients_at_the_cap",),
        "at the cap, idle keep-alive connections keep their places: new clients get 503s while "
        "nothing is being served"),
    # -- 20: tenants and scoped keys -------------------------------------------------
    mutant(
        "tenant-check-dropped", 20, TENANTS,
        (("        return self._prefix + client_id\n", "        return client_id\n"),),
        (f"{T_TENANTS}::test_the_same_id_in_two_tenants_is_two_sessions",
         f"{T_TENANTS}::test_another_tenant_s_key_gets_404_on_every_route_of_a_session_and_changes_nothing"),
        "a session id is taken as the client sent it, whatever the key's tenant: every tenant "
        "reaches the default tenant's sessions"),
    mutant(
        "scope-check-dropped", 20, REQUEST,
        (("        if scope not in caller.scopes:\n", "        if False:\n"),),
        (f"{T_TENANTS}::test_a_read_only_key_reads_and_cannot_write",),
        "any valid key may use any route: a read-only key writes"),
    mutant(
        "key-hash-not-compared", 20, AUTH,
        (("        if matched and record is not None and", "        if record is not None and"),),
        (f"{T_KEYS}::test_a_key_with_a_known_id_and_another_secret_is_refused",),
        "a token naming a known key id is accepted whatever its secret"),
    mutant(
        "expired-key-accepted", 20, AUTH,
        ((" and not record.expired(self._wall()):", ":"),),
        (f"{T_KEYS}::test_an_expired_key_is_refused",),
        "a key past its expiry (an old key after a rotation's grace) keeps working"),
    mutant(
        "tenant-cap-not-checked", 20, LUA_TENANT_COUNT,
        (("if cap > 0 and live >= cap then", "if false then"),),
        (f"{T_CAP}::test_a_tenant_at_its_cap_gets_429_with_retry_after_and_nothing_is_written",
         f"{T_CAP}::test_creates_racing_for_the_last_places_never_pass_the_cap"),
        "a tenant's creates pass TENANT_MAX_SESSIONS"),
    mutant(
        "deleted-session-keeps-its-place", 20, TENANTS,
        (("                if ended:\n", "                if False:\n"),),
        (f"{T_CAP}::test_a_deleted_session_and_a_failed_create_give_their_place_back",),
        "a deleted session is counted until its lifetime would have ended: the tenant is refused "
        "creates it is entitled to"),
)
