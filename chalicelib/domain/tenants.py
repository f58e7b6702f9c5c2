"""Tenants: whose sessions are whose.

Every API key belongs to a tenant.  Clients never see a tenant in an id:
they send and receive the ids they chose.  Inside (Redis keys, the change
events, PostgreSQL rows, the DLQ), a session of tenant ``acme`` is
``acme/<id>``, and so is an owner: ``/`` is outside the id grammar
(``validation.SESSION_ID_PATTERN``), so no client id can name another
tenant's internal id, and every key of a session still derives from one id
(one bucket, one hash slot).  The default tenant's ids carry no prefix: the
sessions written before tenants existed are the default tenant's as they
are, with nothing to move (docs/decisions/tenants.md).

The mapping happens in one place, ``chalicelib.service.tenants``; this
module is its grammar.
"""
from __future__ import annotations

import re

#: the tenant of every key written before tenants existed (and of the
#: plaintext keys still accepted): its ids carry no prefix
DEFAULT_TENANT = "default"
TENANT_PATTERN = r"[a-z0-9][a-z0-9-]{0,31}"
#: between a tenant and a client's id: outside the id grammar
SEPARATOR = "/"


def valid_tenant(name: str) -> bool:
    return bool(re.fullmatch(TENANT_PATTERN, name))  # compiled on first use (cold start)


def prefix(tenant: str) -> str:
    """What an internal id of ``tenant`` starts with ('' for the default)."""
    return "" if tenant == DEFAULT_TENANT else tenant + SEPARATOR


def client_id(tenant: str, internal: str) -> str:
    """The client's id of an internal id of ``tenant`` (``prefix(tenant) + id``)."""
    lead = prefix(tenant)
    return internal[len(lead):] if lead and internal.startswith(lead) else internal


def tenant_of(internal: str) -> str:
    """The tenant an internal id belongs to."""
    tenant, separator, _ = internal.partition(SEPARATOR)
    return tenant if separator else DEFAULT_TENANT
