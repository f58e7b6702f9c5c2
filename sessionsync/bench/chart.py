"""The PNG charts: a bench run's summary and a soak's timeline (matplotlib,
Agg backend, imported only here)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

STORE_OPS = ("floor_get", "floor_hgetall", "floor_evalsha", "get", "create", "update", "delete",
             "outbox_ack")


def _ok(section: Any) -> bool:
    return isinstance(section, dict) and "error" not in section and "skipped" not in section


def _unavailable(ax: Any, title: str, section: Any) -> None:
    ax.set_title(title)
    reason = "not run"
    if isinstance(section, dict):
        reason = section.get("error") or section.get("skipped") or reason
    ax.text(0.5, 0.5, str(reason)[:120], ha="center", va="center", wrap=True, fontsize=8)
    ax.set_axis_off()


def _percentile_bars(ax: Any, names: list[str], latency: dict[str, Any], unit: str = "us") -> None:
    width = 0.27
    for i, q in enumerate(("p50", "p95", "p99")):
        values = [latency[n].get(f"{q}_{unit}", 0) for n in names]
        ax.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=q)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def render(results: dict[str, Any], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = results["sections"]
    fig, axes = plt.subplots(2, 4, figsize=(22, 10))
    axes = axes.ravel()

    store = sections.get("store")
    if _ok(store):
        ratios = store["ratios"]
        _percentile_bars(axes[0], list(STORE_OPS), store["latency"])
        axes[0].set_title(f"Store ops, 1 KB state (us)\nget/GET {ratios['get/floor_get']['p50']}x, "
                          f"update/EVALSHA {ratios['update/floor_evalsha']['p50']}x (p50)")
    else:
        _unavailable(axes[0], "Store ops", store)

    handler = sections.get("handler")
    if _ok(handler):
        names = ["store_get", "handler_get", "handler_put"]
        _percentile_bars(axes[1], names, handler["latency"])
        title = "Warm Lambda handler (us)"
        sqs = handler.get("sqs", {})
        if "send_message" in sqs:
            title += (f"\nLocalStack SendMessage p50 {sqs['send_message']['p50_us'] / 1000:.2f} ms, "
                      f"PUT+SQS p50 {sqs['handler_put_with_sqs']['p50_us'] / 1000:.2f} ms")
        axes[1].set_title(title)
    else:
        _unavailable(axes[1], "Warm Lambda handler", handler)

    cold = sections.get("coldstart")
    if _ok(cold):
        ax = axes[2]
        labels = ["first GET", "first PUT"]
        data = [cold["first_get"]["median"], cold["first_put"]["median"]]
        # results from before the per-function figures have neither key
        extra = {"authorizer_first_call": "authorizer", "consumer_first_batch": "consumer",
                 "relay_first_drain": "relay"}
        for key, label in extra.items():
            if key in cold.get("by_function", {}):
                labels.append(label)
                data.append(cold["by_function"][key]["median"])
        if "bare_chalice" in cold:
            labels.append("bare Chalice")
            data.append(cold["bare_chalice"]["median"])
        imports = [d["import_ms"] for d in data]
        first = [d["first_request_ms"] for d in data]
        ax.bar(labels, imports, label="import app")
        ax.bar(labels, first, bottom=imports, label="first call")
        for x, d in enumerate(data):
            ax.text(x, d["import_ms"] + d["first_request_ms"], f"{d['import_plus_first_ms']:.0f} ms",
                    ha="center", va="bottom", fontsize=8)
        ax.set_title(f"Cold start: import app + first call, median of {cold['runs']} "
                     "fresh processes (ms)")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    else:
        _unavailable(axes[2], "Cold start", cold)

    consumer = sections.get("consumer")
    if _ok(consumer):
        ax = axes[3]
        runs = consumer["handler"]
        labels = [f"batch {r['batch_size']}" for r in runs]
        values = [r["events_per_second"] for r in runs]
        worker = consumer.get("worker_with_localstack", {})
        if "events_per_second" in worker:
            labels.append("worker+LocalStack\n(batch 10)")
            values.append(worker["events_per_second"])
        ax.bar(labels, values, color="tab:green")
        ax.axhline(3800, color="red", linestyle="--", label="target 3,800/s")
        ax.axhspan(306, 765, color="grey", alpha=0.3, label="Node design 306-765/s")
        ax.set_title("Consumer throughput, one worker (events/s)")
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    else:
        _unavailable(axes[3], "Consumer throughput", consumer)

    scale = sections.get("scale")
    if _ok(scale):
        ax = axes[4]
        sizes = [s["sessions"] for s in scale["steps"]]
        for op in ("get", "update"):
            for q, style in (("p50", "-o"), ("p99", "--o")):
                ax.plot(sizes, [s["latency"][op][f"{q}_us"] for s in scale["steps"]], style,
                        label=f"{op} {q}")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        flat = scale["flatness"]
        ax.set_title(f"Latency vs sessions in Redis (us)\np99 flatness: get {flat['get_p99']}x, "
                     f"update {flat['update_p99']}x")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    else:
        _unavailable(axes[4], "Scale", scale)

    memory = sections.get("memory")
    if _ok(memory):
        ax = axes[5]
        sizes = list(memory["by_state_bytes"])
        kinds = [("session_key/payload", "session key"),
                 ("session_and_marker/payload", "key + marker"),
                 ("used_memory_per_session/payload", "used_memory / session")]
        width = 0.27
        for i, (key, label) in enumerate(kinds):
            ax.bar([x + (i - 1) * width for x in range(len(sizes))],
                   [memory["by_state_bytes"][s]["ratios"][key] for s in sizes], width, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(sizes)), [f"{int(s) // 1024} KB state" for s in sizes])
        ax.set_title("Redis memory per session / state size")
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    else:
        _unavailable(axes[5], "Memory per session", memory)

    contention = sections.get("contention")
    if _ok(contention):
        ax = axes[6]
        modes = list(contention["modes"])
        rates = [contention["modes"][m]["updates_per_second"] for m in modes]
        bars = ax.bar(modes, rates, color="tab:purple")
        for bar, m in zip(bars, modes, strict=True):
            d = contention["modes"][m]
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                    f"conflicts {d['conflict_rate']:.0%}\nlost {d['lost_updates']}",
                    ha="center", va="bottom", fontsize=8)
        ax.margins(y=0.2)
        writers = next(iter(contention["modes"].values()))["writers"]
        ax.set_title(f"One hot session, {writers} CAS writers (updates/s)")
        ax.grid(axis="y", alpha=0.3)
    else:
        _unavailable(axes[6], "Contention", contention)

    ax = axes[7]
    ax.set_axis_off()
    machine = results["machine"]
    lines = [f"profile: {results['profile']}   {machine['started_at']}",
             f"CPU: {machine['cpu_model']} x{machine['cpu_count']}",
             f"Python {machine['python']}, {machine.get('redis_server_binary') or ''}"[:90],
             f"commit {(machine['git']['commit'] or '?')[:10]}"
             + (" (dirty)" if machine["git"]["dirty"] else ""),
             f"load avg at start {machine['load_average_at_start']}", ""]
    for check in results.get("targets", []):
        mark = {True: "met", False: "MISSED", None: "info"}[check["met"]]
        lines.append(f"[{mark}] {check['target']}: {check['measured']} {check['unit']}"[:90])
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=7.5)

    fig.suptitle("sessionsync bench", fontsize=14)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def soak_timeline(report: dict[str, Any], path: Path) -> Path:
    """``sessionsync soak``'s timeline: writes acknowledged against rows
    persisted, the outbox and queue behind them, and the processes' memory,
    over the run's seconds (the load shaded)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["timeline"]
    seconds = report["seconds"]
    t = [s["t"] for s in samples]
    fig, (writes, backlog, memory) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    for ax in (writes, backlog, memory):
        ax.axvspan(seconds["load_start"], seconds["load_end"], color="tab:blue", alpha=0.08,
                   label="load")
        ax.grid(alpha=0.3)

    writes.plot(t, [s["acknowledged"] for s in samples], label="acknowledged")
    writes.plot(t, [s.get("persisted") for s in samples], label="persisted (sync_events)")
    writes.axvline(seconds["persisted_by"], color="black", linestyle=":", linewidth=1,
                   label="all persisted" if report["durability"]["exact"] else "check ended")
    lag = report.get("persistence_lag_seconds") or {}
    writes.set_title(f"writes since the start (persistence lag p50 {lag.get('p50', '-')} s, "
                     f"p99 {lag.get('p99', '-')} s)", fontsize=10)
    writes.legend(fontsize=8, loc="upper left")

    for key in ("outbox", "queue"):
        if any(s.get(key) is not None for s in samples):
            backlog.plot(t, [s.get(key) for s in samples], label=f"{key} depth")
    backlog.set_title("what waits to be persisted", fontsize=10)
    backlog.legend(fontsize=8, loc="upper left")

    labels = sorted({label for s in samples for label in s.get("rss_mb", {})})
    for label in labels:
        memory.plot(t, [s["rss_mb"].get(label) for s in samples], label=label)
    memory.set_title("resident memory (MB)", fontsize=10)
    memory.set_xlabel("seconds since the soak started")
    if labels:
        memory.legend(fontsize=8, loc="upper left")
    else:
        memory.text(0.5, 0.5, "no process sampled (--pid LABEL=PID)", ha="center", va="center",
                    transform=memory.transAxes, fontsize=8)

    options, w = report["options"], report["writes"]
    verdict = "EXACT" if report["durability"]["exact"] else "NOT EXACT"
    fig.suptitle(f"sessionsync soak: {options['threads']} threads, {options['duration']:g} s, "
                 f"{w['acknowledged']} writes acknowledged, {report['errors']['count']} errors, "
                 f"durability {verdict}", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
