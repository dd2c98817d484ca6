"""10,000 concurrent conflicting run creations on one thread over HTTP: one accepted, 9,999 × 409.

The platform runs as deployed, with a qcluster beside the API: on PostgreSQL + Redis, uvicorn with
two worker processes, as the README scales out; on SQLite, the embedded shape, one API process
beside the cluster and its ORM broker. Either way the creates race in earnest: Django's ASGI
handler runs each request's sync view in its own thread, so up to 150 transactions contend for the
thread's lock at once. The accepted run sleeps in its graph for the whole test, so every later
create with ``multitask_strategy=reject`` must be refused.

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams, 150 connections each
sending its next request as soon as the previous answer arrives. httpx costs about 7 ms of CPU per
request on this 2-core machine, as much as the server itself, which would double the test's time
for nothing; this client costs about 0.4 ms.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from django.db import connection

from accounts.models import api_key_create
from runs.errors import MULTITASK_REJECTED
from runs.models import Run
from tests.conftest import Cluster, figure
from tests.faults.conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.live, pytest.mark.django_db(transaction=True)]

CREATES = 10_000
IN_FLIGHT = 150


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    bodies: Counter = field(default_factory=Counter)  # distinct answers, by status
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def post_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, host: str, path: str,
                    api_key: str, body: bytes) -> tuple[int, bytes]:
    writer.write(
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\nx-api-key: {api_key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in head[1:] if line)
    }
    if "content-length" not in headers:
        raise ValueError(f"{status} answer without content-length: {headers}")
    return status, await reader.readexactly(int(headers["content-length"]))


async def fire(url: str, api_key: str, thread_id: str) -> tuple[Tally, float]:
    host_port = url.split("//", 1)[1]
    host, port = host_port.rsplit(":", 1)
    path = f"/threads/{thread_id}/runs"
    body = json.dumps(
        {
            "assistant_id": "echo",
            "input": {"messages": [{"role": "user", "content": "hi"}], "sleep": 600},
            "multitask_strategy": "reject",
        }
    ).encode()
    tally = Tally()
    remaining = [CREATES]

    async def connection_loop() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                started = time.monotonic()
                try:
                    status, answer = await post_json(
                        reader, writer, host=host_port, path=path, api_key=api_key, body=body
                    )
                except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                    tally.statuses["transport error"] += 1
                    tally.problems.append(repr(exc))
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                latency = time.monotonic() - started
                tally.latencies.append(latency)
                tally.statuses[status] += 1
                if status not in (200, 409) and len(tally.problems) < 50:
                    tally.problems.append(
                        f"{status} after {latency:.2f}s at {time.monotonic() - begun:.1f}s"
                    )
                tally.bodies[(status, answer.decode())] += 1
        finally:
            writer.close()

    begun = time.monotonic()
    await asyncio.gather(*(connection_loop() for _ in range(IN_FLIGHT)))
    return tally, time.monotonic() - begun


def test_ten_thousand_conflicting_creates_on_one_thread_accept_exactly_one(make_user) -> None:
    _, api_key = api_key_create(user=make_user("racer"))
    api_processes = 1 if connection.vendor == "sqlite" else 2
    server = Server(workers=api_processes, API_CREATE_RATE="10000000/min")
    cluster = Cluster(workers=2)
    try:
        headers = {"x-api-key": api_key}
        response = httpx.post(f"{server.url}/threads", json={}, headers=headers)
        assert response.status_code == 200, response.text
        thread_id = response.json()["thread_id"]

        tally, elapsed = asyncio.run(fire(server.url, api_key, thread_id))

        server_errors = sum(
            n for status, n in tally.statuses.items() if isinstance(status, int) and status >= 500
        )
        if server_errors or tally.problems:
            pytest.fail(f"{tally.statuses}\n{tally.problems}\nserver log:\n{server.errors()}")
        assert tally.statuses == Counter({200: 1, 409: CREATES - 1})
        rejection = json.dumps({"detail": MULTITASK_REJECTED}, separators=(",", ":"))
        assert [answer for (status, answer) in tally.bodies if status == 409] == [rejection]
        runs = httpx.get(f"{server.url}/threads/{thread_id}/runs", headers=headers).json()
        assert len(runs) == 1 and runs[0]["status"] in ("pending", "running"), runs
        assert Run.objects.filter(thread_id=thread_id).count() == 1
        cancel = httpx.post(
            f"{server.url}/threads/{thread_id}/runs/{runs[0]['run_id']}/cancel", headers=headers
        )
        assert cancel.status_code in (200, 202, 204), cancel.text

        latencies = sorted(tally.latencies)
        figure(
            f"{CREATES} conflicting creates (reject) on one thread over HTTP, {IN_FLIGHT} in flight, "
            f"{api_processes} uvicorn process(es) + qcluster on {connection.vendor}: "
            f"1 × 200, {tally.statuses[409]} × 409, 0 × 5xx, in "
            f"{elapsed:.1f}s ({CREATES / elapsed:.0f} req/s; latency p50 "
            f"{statistics.median(latencies) * 1000:.0f} ms, p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms)"
        )
    finally:
        cluster.stop()
        server.stop()
