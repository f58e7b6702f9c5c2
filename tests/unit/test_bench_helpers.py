"""The benchmark's own helpers: statistics, parsing, generated payloads."""
from __future__ import annotations

import json

from chalicelib.pipeline.consumer import parse_record
from sessionsync.bench import coldstart, consumer, stats
from sessionsync.bench.context import state_json
from sessionsync.bench.events import sqs_record


def test_nearest_rank_percentiles():
    samples = list(range(1, 101))
    assert stats.percentile(samples, 50) == 50
    assert stats.percentile(samples, 99) == 99
    assert stats.percentile(samples, 100) == 100
    assert stats.percentile([7], 99) == 7


def test_summary_converts_nanoseconds():
    summary = stats.summarize_ns([1000, 2000, 3000, 4000], "us")
    assert summary["n"] == 4
    assert summary["p50_us"] == 2.0 and summary["max_us"] == 4.0 and summary["mean_us"] == 2.5


def test_interleaved_runs_every_op_equally_and_in_order_within_a_round():
    calls = []
    ops = {"create": lambda: calls.append("c"), "delete": lambda: calls.append("d")}
    samples = stats.interleaved(ops, 20, warmup=2, rounds=4)
    assert {k: len(v) for k, v in samples.items()} == {"create": 20, "delete": 20}
    timed = "".join(calls[4:])  # after the warm-up
    assert timed == ("c" * 5 + "d" * 5) * 4


def test_state_documents_have_the_exact_size():
    for size in (1024, 16384):
        assert len(state_json(size)) == size
        assert isinstance(json.loads(state_json(size)), dict)


def test_generated_change_events_are_what_the_consumer_accepts():
    bodies = consumer.event_bodies("bench-x", 10)
    events = [parse_record(sqs_record(body, event_id=eid)) for eid, body in bodies]
    assert [e.event_id for e in events] == [eid for eid, _ in bodies]
    assert {e.version for e in events} == {1, 2, 3, 4, 5}
    assert events[0].event_type == "session_created" and events[-1].event_type == "session_updated"


def test_importtime_lines_are_parsed():
    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:       120 |        120 |   json.decoder\n"
              "import time:       300 |        420 | json\n"
              "some other line\n")
    rows = coldstart.parse_importtime(stderr)
    assert rows == [{"module": "json.decoder", "self_us": 120, "cumulative_us": 120, "depth": 1},
                    {"module": "json", "self_us": 300, "cumulative_us": 420, "depth": 0}]
    breakdown = coldstart.import_breakdown(rows)
    assert breakdown["self_by_package_ms"] == {"json": 0.4}
    assert breakdown["top_cumulative"][0]["module"] == "json"
