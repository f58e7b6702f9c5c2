"""What each HTTP library costs a client of sessionsync: its import (a cold
start pays it once) and its overhead per request on a kept-alive connection,
against the standard library's http.client as the floor, in the same run.

    .venv/bin/python clients/python/scripts/measure_transports.py

The server is a bare asyncio responder on loopback (a fixed 200 with a small
JSON body, keep-alive), so that the figures are the client's own time, not
the service's.  docs/decisions/python-client-transport.md quotes a run.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import statistics
import subprocess
import sys
import time

BODY = json.dumps({"session_id": "cart-42", "version": 3, "state": {"items": ["book"]}}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: \"3\"\r\n"
            b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
REQUESTS = 3000
IMPORT_RUNS = 15


def serve(port_pipe) -> None:
    """The responder, in a process of its own (so that it takes no GIL from
    the client measured); sends its port through ``port_pipe``."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_pipe.send(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def per_request_us(call, n: int = REQUESTS) -> float:
    for _ in range(200):  # warm up: connection open, caches filled
        call()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def import_ms(module: str) -> float:
    """Median wall time of ``python -c 'import module'`` minus that of an
    empty interpreter, over IMPORT_RUNS fresh processes."""
    def run(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - start

    empty = statistics.median(run("pass") for _ in range(IMPORT_RUNS))
    loaded = statistics.median(run(f"import {module}") for _ in range(IMPORT_RUNS))
    return (loaded - empty) * 1000


def main() -> None:
    import http.client

    import httpx
    import urllib3

    receiver, sender = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.Process(target=serve, args=(sender,), daemon=True)
    server.start()
    if not receiver.poll(10):
        raise RuntimeError("the responder did not start")
    port = receiver.recv()
    url = f"http://127.0.0.1:{port}/sessions/cart-42"
    headers = {"Authorization": "Bearer k", "Accept": "application/json"}

    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def stdlib() -> None:
        conn.request("GET", "/sessions/cart-42", headers=headers)
        json.loads(conn.getresponse().read())

    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1)

    def with_urllib3() -> None:
        json.loads(pool.request("GET", "/sessions/cart-42", headers=headers).data)

    client = httpx.Client(headers=headers)

    def with_httpx() -> None:
        client.get(url).json()

    results = {"http.client (floor)": per_request_us(stdlib), "urllib3": per_request_us(with_urllib3),
               "httpx (sync)": per_request_us(with_httpx)}

    async def async_httpx() -> float:
        async with httpx.AsyncClient(headers=headers) as aclient:
            for _ in range(200):
                await aclient.get(url)
            samples = []
            for _ in range(REQUESTS):
                start = time.perf_counter_ns()
                (await aclient.get(url)).json()
                samples.append(time.perf_counter_ns() - start)
            return statistics.median(samples) / 1000

    results["httpx (async)"] = asyncio.run(async_httpx())
    floor = results["http.client (floor)"]
    print(f"per request, median of {REQUESTS} on a kept-alive loopback connection:")
    for name, value in results.items():
        print(f"  {name:22s} {value:7.1f} us   {value / floor:4.2f}x the floor   +{value - floor:6.1f} us")
    print(f"import, median of {IMPORT_RUNS} fresh interpreters (python -c 'import X' minus 'pass'):")
    for module in ("urllib3", "httpx", "boto3"):
        print(f"  {module:22s} {import_ms(module):7.1f} ms")
    print(f"  {'urllib3 after boto3':22s} "
          f"{import_ms('boto3, urllib3') - import_ms('boto3'):7.1f} ms")
    print(f"  {'httpx after boto3':22s} {import_ms('boto3, httpx') - import_ms('boto3'):7.1f} ms")
    server.terminate()


if __name__ == "__main__":
    main()
