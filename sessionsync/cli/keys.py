"""``sessionsync keys``: create, list, revoke and rotate API keys.

The keys live in the secret SESSIONSYNC_API_KEYS_SECRET_ARN names (or
``--secret-arn``) as records: an id, a hash, a tenant, scopes
(chalicelib/domain/keys.py).  A new key is printed once and stored
nowhere.  Changes reach the authorizer within its cache time, with no deploy.
"""
from __future__ import annotations

from typing import Any

import click

from chalicelib import runtime
from chalicelib.domain.errors import ConfigurationError
from chalicelib.domain.keys import SCOPES, KeyRecord
from chalicelib.domain.tenants import DEFAULT_TENANT
from sessionsync.cli._common import echo_json, exits_on_errors, operator_command, output_format, table

SECRET_ARN_HELP = "The keys secret (default: SESSIONSYNC_API_KEYS_SECRET_ARN)."


def _secret(arn: str | None) -> Any:
    from chalicelib.config import API_KEYS_SECRET_ARN
    from sessionsync.api_keys import KeySecret

    arn = arn or runtime.settings().api_keys_secret_arn
    if not arn:
        raise ConfigurationError(API_KEYS_SECRET_ARN, "is not set (nor --secret-arn): name the keys "
                                                      "secret the authorizer reads")
    return KeySecret(runtime.secrets_client(), arn)


def _record(record: KeyRecord) -> dict[str, Any]:
    """A record as listed: everything but its hash."""
    doc = record.to_dict()
    del doc["sha256"]
    return doc


def _echo_new(new: Any, fmt: str) -> None:
    if fmt == "json":
        echo_json({"key": new.key, "record": _record(new.record),
                   "replaced": _record(new.replaced) if new.replaced else None})
        return
    r = new.record
    click.echo(table(("", ""), [
        ("key", new.key), ("id", r.id), ("tenant", r.tenant), ("scopes", " ".join(sorted(r.scopes))),
        ("expires", r.expires or "never")]).lstrip("\n"))
    if new.replaced:
        click.echo(f"the old key {new.replaced.prefix} keeps working until {new.replaced.expires}")
    click.echo("the key is shown this once: store it now (only its hash is kept)", err=True)


secret_option = click.option("--secret-arn", default=None, help=SECRET_ARN_HELP)


@click.group()
@operator_command
def keys() -> None:
    """API keys: each of a tenant, with scopes (read, write, owner-admin, admin)."""


@keys.command("create")
@click.option("--tenant", default=DEFAULT_TENANT, show_default=True,
              help="Whose sessions the key reaches ([a-z0-9][a-z0-9-]{0,31}).")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(SCOPES),
              help="What it may do; repeat for several (default: read and write).")
@click.option("--expires-in-days", type=click.IntRange(1, 3660), default=None,
              help="It stops working after this many days (default: never).")
@click.option("--print-record", is_flag=True,
              help="Store nothing: print the key and its record, for SESSIONSYNC_API_KEYS "
                   "(a local run without a secret).")
@secret_option
@output_format()
@exits_on_errors
def create(tenant: str, scopes: tuple[str, ...], expires_in_days: int | None, print_record: bool,
           secret_arn: str | None, fmt: str) -> None:
    """A new key, printed once."""
    import time

    from chalicelib.domain.keys import new_key

    chosen = list(scopes) or ["read", "write"]
    expires_in = None if expires_in_days is None else expires_in_days * 86400.0
    if print_record:
        now = time.time()
        key, record = new_key(tenant, chosen, now, None if expires_in is None else now + expires_in)
        if fmt == "json":
            echo_json({"key": key, "record": record.to_dict()})
        else:
            import json
            click.echo(key)
            click.echo(json.dumps(record.to_dict()))
        return
    _echo_new(_secret(secret_arn).create(tenant, chosen, expires_in), fmt)


@keys.command("list")
@secret_option
@output_format()
@exits_on_errors
def list_keys(secret_arn: str | None, fmt: str) -> None:
    """The keys in the secret (never a key, nor its hash)."""
    found = _secret(secret_arn).records()
    if fmt == "json":
        echo_json({"keys": [_record(r) for r in found.records], "plaintext_keys": len(found.legacy)})
        return
    click.echo(table(("PREFIX", "TENANT", "SCOPES", "CREATED", "EXPIRES"),
                     [(r.prefix, r.tenant, " ".join(s for s in SCOPES if s in r.scopes), r.created,
                       r.expires or "never") for r in found.records]))
    if found.legacy:
        click.echo(f"{len(found.legacy)} plaintext key(s) (deprecated): "
                   "`sessionsync keys revoke --plaintext` removes them", err=True)


def _key_id(value: str) -> str:
    """A key id, or its prefix (ss_live_<id>) as listed."""
    return value.removeprefix("ss_live_")


@keys.command("revoke")
@click.argument("key_id", required=False)
@click.option("--plaintext", is_flag=True, help="Remove every plaintext key instead (deprecated ones).")
@secret_option
@output_format()
@exits_on_errors
def revoke(key_id: str | None, plaintext: bool, secret_arn: str | None, fmt: str) -> None:
    """Remove a key (its id or prefix): it stops working within the
    authorizer's cache time (at most 10 minutes)."""
    from chalicelib.api.auth import REVOCATION_SECONDS

    if plaintext == bool(key_id):
        raise click.UsageError("name a KEY_ID or give --plaintext")
    secret = _secret(secret_arn)
    if plaintext:
        removed = secret.revoke_plaintext()
        doc: dict[str, Any] = {"plaintext_keys_removed": removed}
    else:
        doc = {"revoked": _record(secret.revoke(_key_id(key_id or "")))}
    doc["stops_within_seconds"] = REVOCATION_SECONDS
    if fmt == "json":
        echo_json(doc)
    elif plaintext:
        click.echo(f"removed {doc['plaintext_keys_removed']} plaintext key(s); they stop working "
                   f"within {REVOCATION_SECONDS} s")
    else:
        click.echo(f"revoked {doc['revoked']['prefix']}; it stops working within {REVOCATION_SECONDS} s")


@keys.command("rotate")
@click.argument("key_id")
@click.option("--grace-hours", type=click.FloatRange(0, 24 * 90), default=24.0, show_default=True,
              help="How long the old key keeps working, while callers move to the new one.")
@secret_option
@output_format()
@exits_on_errors
def rotate(key_id: str, grace_hours: float, secret_arn: str | None, fmt: str) -> None:
    """A new key of the same tenant and scopes, printed once; the old one
    keeps working for the grace time, then expires."""
    _echo_new(_secret(secret_arn).rotate(_key_id(key_id), grace_hours * 3600), fmt)
