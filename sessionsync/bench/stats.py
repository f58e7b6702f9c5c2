"""Timing loops and percentile summaries shared by every benchmark section.

Latencies are taken with ``time.perf_counter_ns`` around each call, with the
garbage collector paused (a collection inside a timed loop would show up as
a p99 outlier that production, with its own allocation pattern, may never
see).  Operations that are compared with each other run interleaved, in
rounds, so that a noisy neighbour or a CPU frequency change hits all of them
alike instead of skewing one ratio.
"""
from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

Op = Callable[[], object]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect once, then keep the collector off for the timed block."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_calls(op: Op, n: int, out: list[int] | None = None) -> list[int]:
    """Call ``op`` n times; append each call's duration (ns) to ``out``."""
    samples = [] if out is None else out
    clock = time.perf_counter_ns
    append = samples.append
    for _ in range(n):
        start = clock()
        op()
        append(clock() - start)
    return samples


def interleaved(ops: Mapping[str, Op], iterations: int, *, warmup: int, rounds: int = 50,
                between_rounds: Callable[[int], object] | None = None) -> dict[str, list[int]]:
    """Time every op ``iterations`` times, in ``rounds`` round-robin blocks.

    Many short rounds rather than a few long ones: on a VM the loopback
    round trip switches between regimes for seconds at a time, and short
    blocks spread each regime over every op.

    Within a round the ops run in the mapping's order, each for one block;
    an op may rely on the ones before it in the same round (a delete can
    consume the sessions the create just made: both get the same count).
    ``between_rounds(done)`` runs untimed before the first round (done 0)
    and after each (done 1 to rounds): housekeeping.
    """
    rounds = max(1, min(rounds, iterations))
    block = max(1, iterations // rounds)
    for op in ops.values():
        for _ in range(warmup):
            op()
    if between_rounds is not None:
        between_rounds(0)
    samples: dict[str, list[int]] = {name: [] for name in ops}
    with gc_paused():
        for done in range(1, rounds + 1):
            for name, op in ops.items():
                time_calls(op, block, samples[name])
            if between_rounds is not None:
                between_rounds(done)
    return samples


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    if not sorted_samples:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_samples)))
    return sorted_samples[rank - 1]


def summarize_ns(samples: Sequence[int], unit: str = "us") -> dict[str, float]:
    """n, mean, min, p50, p95, p99, max of ns samples, in ``unit`` (us or ms)."""
    scale = {"us": 1e3, "ms": 1e6}[unit]
    ordered = sorted(samples)
    out: dict[str, float] = {"n": len(ordered)}
    out[f"mean_{unit}"] = round(sum(ordered) / len(ordered) / scale, 2)
    out[f"min_{unit}"] = round(ordered[0] / scale, 2)
    for q in (50, 95, 99):
        out[f"p{q}_{unit}"] = round(percentile(ordered, q) / scale, 2)
    out[f"max_{unit}"] = round(ordered[-1] / scale, 2)
    return out


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def ratio(value: float, floor: float) -> float:
    """value / floor, rounded; a zero floor (impossible in practice) gives inf."""
    return round(value / floor, 3) if floor else math.inf
