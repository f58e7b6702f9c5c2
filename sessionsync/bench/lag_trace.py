"""Where the persistence lag goes: each change's times along the pipeline.

The persistence section runs ``sessionsync serve`` through ``main`` here
instead of the CLI's own entry point: the same server, with the pipeline's
steps wrapped so that each notes the wall-clock time it handled which
change (the server's code is not touched, and a note costs a clock read and
a line written: microseconds against milliseconds).  Per change:

* ``read``: the relay has it in hand and hands it to its lanes (a
  wake-up's events as it collected them, or a sweep's page), ``source``
  saying which;
* ``send`` / ``sent``: its SendMessageBatch call started / SQS took it and
  the outbox entry was acked (``SqsProducer.send_many``);
* ``received``: the consumer got it from the worker (the local stand-in for
  the event source mapping), with SQS's own SentTimestamp and
  ApproximateFirstReceiveTimestamp;
* ``committed``: the consumer's transaction returned (``Consumer.process``).

``split`` joins them with the client's acknowledgement times into one
distribution per step; a change's steps add up to its lag (the row's
``persisted_at`` is its transaction's start, a little before ``committed``).
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sessionsync.bench.stats import percentile

#: the file the served process writes its notes to (JSON lines)
TRACE_ENV = "SESSIONSYNC_BENCH_LAG_TRACE"
#: the steps in order: (name, from note, to note)
STEPS = (("ack_to_relay_read", "ack", "read"),
         ("relay_read_to_send", "read", "send"),  # waiting in its lane
         ("send_batch", "send", "sent"),
         ("sent_to_consumer_receive", "sent", "received"),
         ("consumer_transaction", "received", "committed"))


class _Notes:
    def __init__(self, path: str) -> None:
        # open for the served process's life: it is stopped by a signal
        self._out = open(path, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()
        self.local = threading.local()

    def note(self, stage: str, ids: Sequence[str], **extra: Any) -> None:
        if not ids:
            return
        line = json.dumps({"stage": stage, "t": time.time(), "ids": list(ids), **extra})
        with self._lock:
            self._out.write(line + "\n")


def install(path: str) -> None:
    """Wrap the relay's, the producer's and the consumer's steps to note
    each change's times in ``path``."""
    from chalicelib.pipeline import outbox
    from chalicelib.pipeline.consumer import Consumer
    from chalicelib.pipeline.producer import SqsProducer

    notes = _Notes(path)
    lanes_send = outbox.Lanes.send
    wake_send = outbox._Loop._send
    sweep = outbox._Loop._sweep
    send_many = SqsProducer.send_many
    process = Consumer.process

    def traced_wake(loop: Any, events: Sequence[tuple[str, str]]) -> None:
        notes.note("read", [eid for eid, _ in events], source="wake")
        wake_send(loop, events)

    def traced_lanes(lanes: Any, events: Sequence[tuple[str, str]]) -> int:
        # a sweep's page (the wake-ups are handed over with put)
        source = "sweep" if getattr(notes.local, "sweeping", False) else "drain"
        notes.note("read", [eid for eid, _ in events], source=source)
        return lanes_send(lanes, events)

    def traced_sweep(loop: Any) -> None:
        notes.local.sweeping = True
        try:
            sweep(loop)
        finally:
            notes.local.sweeping = False

    def traced_send_many(producer: Any, events: Iterable[tuple[str, str]]) -> list[str]:
        events = list(events)
        notes.note("send", [eid for eid, _ in events])
        sent = send_many(producer, events)
        notes.note("sent", sent)
        return sent

    def traced_process(consumer: Any, records: Sequence[Mapping[str, Any]]) -> Any:
        ids, sqs_sent, first = [], [], []
        for record in records:
            value = (record.get("messageAttributes") or {}).get("event_id") or {}
            attributes = record.get("attributes") or {}
            ids.append(value.get("stringValue", ""))
            sqs_sent.append(int(attributes.get("SentTimestamp", 0)))
            first.append(int(attributes.get("ApproximateFirstReceiveTimestamp", 0)))
        notes.note("received", ids, sqs_sent_ms=sqs_sent, sqs_first_receive_ms=first)
        report = process(consumer, records)
        notes.note("committed", ids)
        return report

    for owner, name, traced in ((outbox.Lanes, "send", traced_lanes), (outbox._Loop, "_send", traced_wake),
                                (outbox._Loop, "_sweep", traced_sweep),
                                (SqsProducer, "send_many", traced_send_many),
                                (Consumer, "process", traced_process)):
        setattr(owner, name, traced)


def main() -> None:
    """``sessionsync`` with the pipeline traced (``TRACE_ENV`` names the file)."""
    if path := os.environ.get(TRACE_ENV):
        install(path)
    from sessionsync.cli import main as cli
    cli()


def _first_times(path: Path
                 ) -> tuple[dict[str, dict[str, float]], dict[str, int], list[int], list[int]]:
    """Per change id, the first time of each note; the reads by source;
    the sizes of the wake-ups' reads; the sizes of the SendMessageBatch calls."""
    first: dict[str, dict[str, float]] = {}
    sources: dict[str, int] = {}
    wake_sizes: list[int] = []
    send_sizes: list[int] = []
    if not path.exists():
        return first, sources, wake_sizes, send_sizes
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            note = json.loads(line)
        except ValueError:
            continue  # the last line of a process stopped mid-write
        stage, at, ids = note["stage"], note["t"], note["ids"]
        if stage == "send":
            send_sizes.append(len(ids))
        if stage == "read":
            sources[note["source"]] = sources.get(note["source"], 0) + len(ids)
            if note["source"] == "wake":
                wake_sizes.append(len(ids))
        for n, eid in enumerate(ids):
            times = first.setdefault(eid, {})
            if stage not in times:
                times[stage] = at
                if stage == "received":
                    # SQS's clocks, in ms (LocalStack: the same machine's)
                    times["sqs_sent"] = note["sqs_sent_ms"][n] / 1000
                    times["sqs_first_receive"] = note["sqs_first_receive_ms"][n] / 1000
    return first, sources, wake_sizes, send_sizes


def _summary(values_ms: list[float]) -> dict[str, float]:
    values_ms.sort()
    return {"p50_ms": round(percentile(values_ms, 50), 1), "p90_ms": round(percentile(values_ms, 90), 1),
            "p99_ms": round(percentile(values_ms, 99), 1),
            "mean_ms": round(sum(values_ms) / len(values_ms), 1)}


def split(path: Path, acks: Mapping[str, float],
          persisted: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The lag of each acknowledged change (id -> acknowledged at, epoch
    seconds) split into the steps of ``STEPS``: each step's distribution,
    and the mean split of the slowest 1% (what the p99 is made of)."""
    first, sources, wake_sizes, send_sizes = _first_times(path)
    traced: list[tuple[float, dict[str, float]]] = []
    for eid, acked in acks.items():
        times = first.get(eid)
        if times and all(step in times for step in ("read", "send", "sent", "received", "committed")):
            traced.append((acked, {"ack": acked, **times}))
    if not traced:
        return {"traced": 0, "writes": len(acks)}
    steps: dict[str, list[float]] = {name: [] for name, _, _ in STEPS}
    # inside sent_to_consumer_receive: SQS's own stamps (its clock, in ms)
    sqs_parts: dict[str, list[float]] = {"sqs_sent_to_first_receive": [], "first_receive_to_consumer": []}
    totals: list[tuple[float, dict[str, float]]] = []
    for _, times in traced:
        parts = {name: (times[end] - times[start]) * 1000 for name, start, end in STEPS}
        for name, value in parts.items():
            steps[name].append(value)
        if times.get("sqs_first_receive"):
            sqs_parts["sqs_sent_to_first_receive"].append(
                (times["sqs_first_receive"] - times["sqs_sent"]) * 1000)
            sqs_parts["first_receive_to_consumer"].append(
                (times["received"] - times["sqs_first_receive"]) * 1000)
        totals.append(((times["committed"] - times["ack"]) * 1000, parts))
    totals.sort(key=lambda item: item[0])
    tail = totals[-max(1, len(totals) // 100):]
    result: dict[str, Any] = {
        "traced": len(traced), "writes": len(acks),
        "steps": {name: _summary(values) for name, values in steps.items()},
        "sqs_stamps": {name: _summary(values) for name, values in sqs_parts.items() if values},
        "ack_to_committed": _summary([total for total, _ in totals]),
        "slowest_1pct_mean_split_ms": {
            name: round(sum(parts[name] for _, parts in tail) / len(tail), 1) for name, _, _ in STEPS},
        "relay_reads_by_source": sources,
        "wake_batch_size": ({"mean": round(sum(wake_sizes) / len(wake_sizes), 1),
                             "max": max(wake_sizes), "wakeups": len(wake_sizes)}
                            if wake_sizes else {}),
        # every call of the run (the write/read part's too)
        "send_calls": ({"calls": len(send_sizes), "mean_entries": round(sum(send_sizes) / len(send_sizes), 2)}
                       if send_sizes else {}),
    }
    if persisted:
        # persisted_at is PostgreSQL's now(): the consumer transaction's start
        gaps = [(persisted[eid] - times["received"]) * 1000
                for eid, times in ((eid, first[eid]) for eid in acks if eid in first and eid in persisted)
                if "received" in times]
        if gaps:
            result["consumer_receive_to_persisted_at"] = _summary(gaps)
    return result


def entry_command() -> list[str]:
    """The ``python -c`` arguments that run ``main``."""
    return ["-c", "from sessionsync.bench.lag_trace import main; main()"]

