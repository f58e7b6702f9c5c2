"""The parallel-consumer bench's deadlock count sees a real deadlock.

``sessionsync bench`` reports "no deadlock" from the delta of
``pg_stat_database.deadlocks``, read once the consumers' backends have
exited (a backend flushes its statistics then).  Here two transactions
deadlock for real, in a database of the test's own, and the bench's
reading must count exactly that one: a count that stayed at 0 whatever
happened would make the bench's verdict worthless.
"""
from __future__ import annotations

import threading

import psycopg

from sessionsync.bench import consumers_parallel


def test_the_bench_counts_a_deadlock_between_two_real_transactions(empty_dsn):
    # empty_dsn: a database of the test's own, so the counter is the test's alone
    with psycopg.connect(empty_dsn, autocommit=True) as admin:
        admin.execute("CREATE TABLE pair (id int PRIMARY KEY, n int)")
        admin.execute("INSERT INTO pair VALUES (1, 0), (2, 0)")
        before = consumers_parallel._deadlocks(admin)
        first, second = psycopg.connect(empty_dsn), psycopg.connect(empty_dsn)
        pids = {first.info.backend_pid, second.info.backend_pid}
        outcomes: dict[str, BaseException | None] = {}
        try:
            for conn in (first, second):
                conn.execute("SET lock_timeout = '20s'")
                conn.execute("SET deadlock_timeout = '50ms'")
            first.execute("UPDATE pair SET n = n + 1 WHERE id = 1")
            second.execute("UPDATE pair SET n = n + 1 WHERE id = 2")

            def cross(name: str, conn: psycopg.Connection, row: int) -> None:
                try:
                    conn.execute("UPDATE pair SET n = n + 1 WHERE id = %s", (row,))
                    outcomes[name] = None
                except psycopg.Error as exc:
                    outcomes[name] = exc
                finally:
                    conn.rollback()

            # each waits on the row the other holds: PostgreSQL aborts one
            threads = [threading.Thread(target=cross, args=("first", first, 2)),
                       threading.Thread(target=cross, args=("second", second, 1))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            assert not any(t.is_alive() for t in threads)
        finally:
            first.close()
            second.close()
        failed = [e for e in outcomes.values() if e is not None]
        assert len(failed) == 1 and isinstance(failed[0], psycopg.errors.DeadlockDetected), outcomes

        consumers_parallel._wait_backends_gone(admin, pids)

        assert consumers_parallel._deadlocks(admin) - before == 1

