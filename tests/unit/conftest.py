"""The unit tier does no I/O: a test here that opens a network connection
(Python sockets, or libpq under psycopg) fails with the address it tried,
so that a test needing Redis, PostgreSQL, LocalStack or a server of its own
lands in tests/integration instead of slowing `make unit` down.  Unix
sockets stay allowed; moto intercepts boto3 before any socket is opened.

The guard wraps setup and call (not an autouse fixture) so that it also
covers session fixtures such as ``redis_single``, which pytest would set up
before any function-scoped fixture.  Not teardown: in a whole-suite run the
last unit test's teardown is where the integration tests' session fixtures
(the test database) are finalized.
"""
from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest


def _refuse(address: object) -> None:
    pytest.fail(f"unit tests do no network I/O: this one connected to {address!r}; "
                "it belongs in tests/integration", pytrace=False)


def _guarded_socket(real):
    def connect(sock: socket.socket, address):
        if sock.family != socket.AF_UNIX:
            _refuse(address)
        return real(sock, address)
    return connect


def _guarded_psycopg(*args, **kwargs):
    _refuse(next((a for a in args if isinstance(a, str)), kwargs.get("conninfo", "")))


@contextmanager
def _no_network() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _guarded_socket(socket.socket.connect))
        patch.setattr(socket.socket, "connect_ex", _guarded_socket(socket.socket.connect_ex))
        patch.setattr(psycopg.Connection, "connect", classmethod(_guarded_psycopg))
        patch.setattr(psycopg, "connect", _guarded_psycopg)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item) -> Iterator[None]:
    with _no_network():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item) -> Iterator[None]:
    with _no_network():
        return (yield)
