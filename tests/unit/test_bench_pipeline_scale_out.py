"""The pure computations of the scale-out bench sections (consumer_floor,
consumers_parallel, relay's page flatness, http_load) and their targets,
on known inputs."""
from __future__ import annotations

import json
from collections import Counter

from chalicelib.domain.events import parse_event
from sessionsync.bench import consumer_floor, consumers_parallel, http_load, relay, targets
from sessionsync.bench.consumer import change_event


def _event(sid: str, version: int):
    return parse_event(change_event(sid, version, {"a": version}, "2026-01-01T00:00:00.000Z"))


def test_the_floor_upserts_each_session_once_at_its_highest_version_in_id_order():
    events = [_event("b", 2), _event("a", 1), _event("b", 5), _event("a", 3), _event("b", 4)]

    latest = consumer_floor.latest_per_session(events)

    assert [(e.session_id, e.version) for e in latest] == [("a", 3), ("b", 5)]


def test_the_consumer_is_compared_with_the_faster_floor_round_by_round():
    def writer(*by_round: float) -> dict:
        return {"events_per_second_by_round": list(by_round),
                "events_per_second": sorted(by_round)[len(by_round) // 2]}
    # round 2 ran while the machine was busy: every writer slowed alike
    writers = {"consumer": writer(800, 400, 800), "unnest": writer(1000, 500, 1000),
               "executemany": writer(500, 250, 1000), "copy": writer(900, 450, 700)}

    ratios = consumer_floor.floor_ratios(writers)

    assert ratios["floor_is"] == "copy"  # the higher median
    # per round: 800/900, 400/450, 800/1000 (the faster floor of each round)
    assert ratios["consumer/floor"] == round(800 / 900, 3)
    assert ratios["consumer/executemany"] == 1.6
    assert ratios["consumer/unnest"] == 0.8


def test_a_writer_s_figure_is_the_median_of_its_rounds():
    summary = consumer_floor.summarize_writer(1000, [1.0, 0.5, 2.0], [1_000_000, 2_000_000])

    assert summary["events_per_second_by_round"] == [1000.0, 2000.0, 500.0]
    assert summary["events_per_second"] == 1000.0
    assert summary["batch_latency_ms"]["n"] == 2


def test_batches_are_dealt_round_robin_and_every_event_goes_to_exactly_one_consumer():
    bodies = [(f"s-{i % 3}:{i // 3 + 1}", "{}") for i in range(25)]

    shares = consumers_parallel.deal(bodies, 3, 4)

    assert [len(share) for share in shares] == [3, 2, 2]  # 7 batches: 4+4+...+1
    assert shares[0][0] == bodies[0:4] and shares[1][0] == bodies[4:8] and shares[0][1] == bodies[12:16]
    dealt = [b for share in shares for batch in share for b in batch]
    assert sorted(dealt) == sorted(bodies)


def test_the_hot_workload_puts_every_event_on_a_few_sessions_version_by_version():
    bodies = consumers_parallel.workload_bodies("hot_sessions", "p", 20)

    ids = [eid for eid, _ in bodies]
    assert len({eid.rsplit(":", 1)[0] for eid in ids}) == consumers_parallel.HOT_SESSIONS
    assert ids[:5] == ["p-0:1", "p-1:1", "p-2:1", "p-3:1", "p-0:2"]
    assert len(set(ids)) == len(ids) == 20
    first = json.loads(bodies[0][1])
    assert (first["session_id"], first["version"], first["event_type"]) == ("p-0", 1, "session_created")


def test_many_sessions_get_a_few_versions_each():
    bodies = consumers_parallel.workload_bodies("many_sessions", "p", 50)

    versions = Counter(eid.rsplit(":", 1)[0] for eid, _ in bodies)
    assert len(versions) == 50 // consumers_parallel.MANY_VERSIONS
    assert set(versions.values()) == {consumers_parallel.MANY_VERSIONS}


def test_lock_wait_samples_are_summed_up():
    samples = [(0, []), (2, ["tuple", "transactionid"]), (1, ["transactionid"]), (0, [])]

    summary = consumers_parallel.summarize_samples(samples)

    assert summary["samples"] == 4
    assert summary["samples_with_lock_waits"] == 2
    assert summary["share_of_samples_with_lock_waits"] == 0.5
    assert summary["mean_backends_waiting"] == 0.75
    assert summary["max_backends_waiting"] == 2
    assert summary["by_wait_event"] == {"transactionid": 2, "tuple": 1}
    assert consumers_parallel.summarize_samples([])["samples_with_lock_waits"] == 0


def test_page_flatness_compares_the_first_and_last_tenth_of_the_full_pages():
    pages = [4_000_000] * 10 + [2_000_000] * 80 + [1_000_000] * 10 + [50]  # the last is partial

    flat = relay.page_flatness(pages)

    assert flat["pages_compared"] == 10
    assert flat["first_tenth_median_ms"] == 4.0
    assert flat["last_tenth_median_ms"] == 1.0
    assert flat["first/last"] == 4.0
    assert relay.page_flatness([3_000_000])["first/last"] == 1.0


def test_http_errors_are_named_by_route_status_and_problem_code():
    assert http_load.error_kind("PUT /sessions/{id}", 503,
                                b'{"code":"ServiceUnavailable","title":"x"}') == \
        "PUT /sessions/{id} 503 ServiceUnavailable"
    assert http_load.error_kind("GET /sessions/{id}", 500, b"<html>") == "GET /sessions/{id} 500"
    assert http_load.version_of({"etag": '"7"'}) == 7
    assert http_load.version_of({}) is None


def test_client_figures_are_merged_with_conflicts_apart_from_errors():
    a, b = http_load.ClientStats(), http_load.ClientStats()
    a.requests, b.requests = 3, 2
    a.latency_ns["PUT /sessions/{id}"] = [1_000_000, 3_000_000]
    b.latency_ns["PUT /sessions/{id}"] = [2_000_000]
    a.statuses["PUT /sessions/{id}"] = Counter({200: 1, 412: 1})
    b.statuses["PUT /sessions/{id}"] = Counter({200: 1})
    a.conflicts["PUT /sessions/{id} 412"] = 1
    b.errors["GET /sessions/{id} transport ConnectionResetError"] = 2

    merged = http_load.merge([a, b], 2.0)

    assert merged["requests"] == 5 and merged["requests_per_second"] == 2.5
    route = merged["routes"]["PUT /sessions/{id}"]
    assert route["n"] == 3 and route["p50_ms"] == 2.0
    assert route["statuses"] == {"200": 2, "412": 1}
    assert merged["conflicts"] == 1 and merged["errors"] == 2
    ratios = http_load.floor_ratios(
        {"requests_per_second": 10.0, "routes": {"GET /x": {"p50_ms": 0.5, "p99_ms": 1.0}}}, merged)
    assert ratios["floor_rps/rps"] == 4.0
    assert ratios["PUT /sessions/{id} p50/floor p50"] == 4.0


def _scale_out(*, floor=0.8, deadlocks=0, flat=2.0, http_errors=0) -> dict:
    run = {"consumers": 8, "events_per_second": 4000.0, "speedup_vs_2": 1.5,
           "lock_waits": {"share_of_samples_with_lock_waits": 0.1}, "deadlocks": deadlocks}
    workload = {"many_sessions": {"requests_per_second": 900.0}}
    return {
        "consumer_floor": {"by_batch": [
            {"batch_size": b, "ratios": {"consumer/floor": floor + 0.1 * (b != 10),
                                         "consumer/unnest": 0.7, "floor_is": "copy"}}
            for b in (1, 10, 100)]},
        "consumers_parallel": {"deadlocks_total": deadlocks, "workloads": {
            "many_sessions": {"runs": [{**run, "consumers": 2}, run]},
            "hot_sessions": {"runs": [run]}}},
        "relay": {"linearity": {"per_entry_cost_ratio": 1.0},
                  "drains": [{"backlog": 1000, "entries_per_second": 50_000},
                             {"backlog": 100_000, "entries_per_second": 40_000,
                              "page_flatness": {"first/last": flat}}]},
        "http_load": {"errors_total": http_errors, "by_clients": [
            {"clients": 64, "workloads": workload,
             "ratios": {"many_sessions": {"floor_rps/rps": 3.0}}}]},
    }


def _verdicts(sections) -> dict[str, tuple]:
    return {c["target"]: (c["measured"], c["limit"], c["met"]) for c in targets.evaluate(sections)}


def test_the_scale_out_targets_at_their_limits_are_met():
    verdicts = _verdicts(_scale_out())

    assert verdicts["consumer >= 0.8x raw psycopg (executemany or COPY) at batch 10"] == (0.8, 0.8, True)
    assert verdicts["no deadlock, 2-8 consumers at once (many and hot sessions)"] == (0, 0, True)
    assert verdicts["relay page time flat as a 100,000-entry backlog shrinks"] == (2.0, 2.0, True)
    assert verdicts["no HTTP errors with 64 concurrent clients"] == (0, 0, True)
    assert verdicts["8 consumers at once, hot sessions"] == (4000.0, None, None)


def test_the_scale_out_targets_just_past_their_limits_are_missed():
    verdicts = _verdicts(_scale_out(floor=0.79, deadlocks=1, flat=2.01, http_errors=1))

    assert verdicts["consumer >= 0.8x raw psycopg (executemany or COPY) at batch 10"][2] is False
    assert verdicts["consumer >= 0.8x raw psycopg (executemany or COPY) at batch 100"][2] is True
    assert verdicts["no deadlock, 2-8 consumers at once (many and hot sessions)"][2] is False
    assert verdicts["relay page time flat as a 100,000-entry backlog shrinks"][2] is False
    assert verdicts["no HTTP errors with 64 concurrent clients"][2] is False
