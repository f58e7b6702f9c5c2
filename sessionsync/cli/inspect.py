"""``sessionsync inspect``: one session everywhere, and what is wrong with it."""
from __future__ import annotations

import sys
from typing import Any

import click

from chalicelib import runtime
from sessionsync.cli._common import (
    EXIT_FAILED,
    MARKS,
    SESSION_ID,
    echo_json,
    exits_on_errors,
    operator_command,
    output_format,
)


@click.command("inspect")
@SESSION_ID
@output_format(json_flag=True)
@click.option("--events", type=click.IntRange(1, 500), default=5, show_default=True,
              help="How many of the last persisted events to show.")
@click.option("--dlq-max", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Read at most this many DLQ messages, looking for the session's.")
@exits_on_errors
@operator_command
def inspect_command(session_id: str, fmt: str, events: int, dlq_max: int) -> None:
    """Everything about one session, and what is wrong with it, in words.

    Redis key, TTL, version and size; the version marker; outbox entries
    still waiting; the version in PostgreSQL and the lag behind Redis; the
    DLQ messages that name it (peeked, left in place); the last events.
    Read-only.  Exit 0 nothing wrong, 1 something is (a warning, a failure,
    or a source that could not be read), 2 configuration error.
    """
    from sessionsync import inspect as inspection

    settings = runtime.settings()
    has_dlq = bool(settings.dlq_url or settings.dlq_name)
    found = inspection.inspect(session_id, store=runtime.store(), database=runtime.database(),
                               sqs=runtime.sqs() if has_dlq else None,
                               dlq_url=runtime.dlq_url if has_dlq else None,
                               events=events, dlq_limit=dlq_max)
    doc = found.to_dict()
    if fmt == "json":
        echo_json(doc)
    else:
        click.echo(_inspection_text(doc))
    if doc["level"] in ("warn", "fail"):
        sys.exit(EXIT_FAILED)


def _inspection_text(doc: dict[str, Any]) -> str:
    lines = [f"session     {doc['session_id']}"]
    r = doc["redis"]
    if r is None:
        lines.append(f"redis       {doc['keys']['session']}  (not read)")
    else:
        if r["present"]:
            ttl = "no TTL" if r["ttl_left_s"] == -1 else f"TTL {r['ttl_left_s']} s of {r['ttl_seconds']} s"
            lines.append(f"redis       {r['key']}  v{r['version']}{' deleted' if r['deleted'] else ''}  "
                         f"{ttl}  {r['value_bytes']} bytes (memory {r['memory_bytes']})  "
                         f"updated {r['updated_at']}")
        else:
            lines.append(f"redis       {r['key']}  no key")
        m = r["marker"]
        lines.append(f"marker      {doc['keys']['marker']}  " + (
            "none" if m is None else f"v{m['version']}{' deleted' if m['deleted'] else ''}  "
            + ("no TTL" if m["ttl_left_s"] == -1 else f"TTL {m['ttl_left_s']} s")))
        lines.append("outbox      " + (", ".join(f"v{e['version']} ({e['age_s']} s old)" for e in r["outbox"])
                                       or "nothing waiting"))
    pg = doc["postgresql"]
    if "postgresql" in doc["not_configured"]:
        lines.append("postgresql  not configured")
    elif "postgresql" not in doc["errors"]:
        s = pg["session"]
        lines.append("postgresql  " + ("no row in sync_sessions" if s is None else
                                       f"v{s['version']}{' deleted' if s['deleted'] else ''}  "
                                       f"updated {s['updated_at']}")
                     + ("" if pg["lag_versions"] is None else f"  lag {pg['lag_versions']} version(s)"))
        for e in pg["events"]:
            lines.append(f"  event     v{e['version']} {e['event_type']}  at {e['occurred_at']}  "
                         f"persisted {e['persisted_at']}")
    d = doc["dlq"]
    if "dlq" in doc["not_configured"]:
        lines.append("dlq         not configured")
    elif d is not None:
        lines.append(f"dlq         {len(d['messages'])} message(s) for this session "
                     f"(of {d['read']} read, left in place)")
        for m in d["messages"]:
            lines.append(f"  message   v{m['version']} {m['error_class']} {m['error_code'] or ''} "
                         f"{m['constraint'] or ''}".rstrip())
    lines.append("")
    for f in doc["findings"]:
        lines.append(f"{MARKS[f['level']]} {f['summary']}")
        if f.get("fix") and f["level"] != "ok":
            lines.append(f"         fix: {f['fix']}")
    lines.append(f"overall: {doc['level']}")
    return "\n".join(lines)
