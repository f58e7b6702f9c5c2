"""The HTTP client of the bench's load and of ``sessionsync soak``.

One keep-alive connection with TCP_NODELAY, JSON bodies, the API key; each
request's latency and status recorded by route ("METHOD /template"), so
that clients in many threads can be merged into one summary afterwards.
"""
from __future__ import annotations

import http.client
import json
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sessionsync.bench.stats import summarize_ns


class TransportError(Exception):
    """The request got no answer (connection refused or reset, timeout)."""

    def __init__(self, route: str, cause: BaseException) -> None:
        super().__init__(f"{route}: {type(cause).__name__}: {cause}")
        self.kind = type(cause).__name__


@dataclass
class RouteStats:
    """One client's figures, by route."""

    latency_ns: dict[str, list[int]] = field(default_factory=dict)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    requests: int = 0


class HttpClient:
    """One keep-alive connection to ``url`` (http://host:port); reconnects
    on the next request after a failure or a ``Connection: close``."""

    def __init__(self, url: str, api_key: str, timeout: float, stats: RouteStats) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"plain http://host:port only, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self.auth = {"Authorization": f"Bearer {api_key}"}
        self.stats = stats
        self.conn: http.client.HTTPConnection | None = None

    def connect(self) -> None:
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.conn.connect()
        assert self.conn.sock is not None  # just connected
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, route: str, method: str, path: str, body: Any = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers in lower case, body).  Raises TransportError."""
        all_headers = {**self.auth, **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            all_headers["Content-Type"] = "application/json"
        self.stats.requests += 1
        start = time.perf_counter_ns()
        try:
            if self.conn is None:
                self.connect()
            assert self.conn is not None  # connected above
            self.conn.request(method, path, body=payload, headers=all_headers)
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransportError(route, exc) from exc
        self.stats.latency_ns.setdefault(route, []).append(time.perf_counter_ns() - start)
        self.stats.statuses.setdefault(route, Counter())[response.status] += 1
        if response.will_close:
            self.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def summarize_routes(stats: Iterable[RouteStats]) -> dict[str, dict[str, Any]]:
    """Latency (ms) and statuses of every route over all the clients."""
    latency: dict[str, list[int]] = {}
    statuses: dict[str, Counter[int]] = {}
    for s in stats:
        for route, values in s.latency_ns.items():
            latency.setdefault(route, []).extend(values)
        for route, counts in s.statuses.items():
            statuses.setdefault(route, Counter()).update(counts)
    return {route: {**summarize_ns(values, "ms"),
                    "statuses": {str(k): v for k, v in sorted(statuses[route].items())}}
            for route, values in sorted(latency.items())}
