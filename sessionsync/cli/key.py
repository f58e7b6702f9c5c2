"""``sessionsync key``: a session's Redis keys, computed (nothing is read)."""
from __future__ import annotations

import click

from sessionsync.cli._common import SESSION_ID, echo_json, output_format, table


@click.command()
@SESSION_ID
@click.option("--all", "show_all", is_flag=True,
              help="Every key of the session, by role: session, marker, outbox index and data, "
                   "epoch, hold.")
@output_format()
def key(session_id: str, show_all: bool, fmt: str) -> None:
    """The Redis key of a session: redis-cli TTL "$(sessionsync key ID)".

    Keys are ss:{NNNN}:s:<id>, where NNNN is the session's bucket
    (crc32 of the id mod 1024): a hash tag that keeps every key of a session
    on one cluster slot.  Nothing is read from Redis.  With --format json,
    every key by role.
    """
    from chalicelib.adapters.redis.keys import key_names

    names = key_names(session_id)
    if fmt == "json":
        echo_json(names)
    elif show_all:
        click.echo(table(("ROLE", "KEY"), names.items()))
    else:
        click.echo(names["session"])
