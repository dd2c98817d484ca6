"""The pooled-thread ASGI handler: the same answers as Django's, one reused thread per request."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIHandler

from project.api.asgi_handler import PooledThreadASGIHandler
from runs.models import Run, RunStatus

pytestmark = pytest.mark.django_db(transaction=True)

RUN = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}}


def requests(app, api_key: str, calls):
    """Send ``calls`` (method, path, json) one after the other through ``app``; the responses."""

    async def send_all():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers={"x-api-key": api_key}
        ) as client:
            return [await client.request(method, path, json=body) for method, path, body in calls]

    return async_to_sync(send_all)()


@pytest.fixture
def api_key(alice):
    from accounts.models import api_key_create

    return api_key_create(user=alice)[1]


def test_answers_as_djangos_handler_does(api_key, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    thread_id = requests(ASGIHandler(), api_key, [("POST", "/threads", {})])[0].json()["thread_id"]
    calls = [
        ("GET", "/ok", None),
        ("GET", f"/threads/{thread_id}", None),
        ("GET", "/threads/00000000-0000-0000-0000-000000000000", None),
        ("POST", "/threads/search", {"limit": "x"}),
        ("POST", "/threads", {"metadata": {"x": "y" * 2000}}),  # the body limit's middleware
        ("POST", "/runs/stream", {"assistant_id": 5}),  # an async view
        ("GET", "/nowhere", None),
    ]
    ours = requests(PooledThreadASGIHandler(), api_key, calls)
    djangos = requests(ASGIHandler(), api_key, calls)
    for (_, path, _), mine, theirs in zip(calls, ours, djangos, strict=True):
        assert (mine.status_code, mine.content) == (theirs.status_code, theirs.content), path
        assert mine.headers.get("content-type") == theirs.headers.get("content-type"), path
    assert [response.status_code for response in ours] == [200, 200, 404, 422, 413, 422, 404]


def test_requests_reuse_one_thread(api_key) -> None:
    app = PooledThreadASGIHandler()
    requests(app, api_key, [("GET", "/ok", None)])
    threads_before = threading.active_count()
    responses = requests(app, api_key, [("POST", "/threads", {}) for _ in range(20)])
    assert all(response.status_code == 200 for response in responses)
    assert threading.active_count() == threads_before
    assert app.executors.idle == 1


def test_a_wait_reads_the_run_on_the_requests_thread(api_key, alice) -> None:
    app = PooledThreadASGIHandler()
    thread_id = requests(app, api_key, [("POST", "/threads", {})])[0].json()["thread_id"]
    run = requests(app, api_key, [("POST", f"/threads/{thread_id}/runs", RUN)])[0].json()
    Run.objects.filter(pk=run["run_id"]).update(status=RunStatus.SUCCESS, result={"done": True})
    joined = requests(app, api_key, [("GET", f"/threads/{thread_id}/runs/{run['run_id']}/join", None)])
    assert joined[0].status_code == 200 and joined[0].json() == {"done": True}
    assert app.executors.idle == 1


def test_a_cancelled_request_does_not_lend_its_thread_again(api_key) -> None:
    app = PooledThreadASGIHandler()
    started = asyncio.Event()

    async def cancel_midway():
        scope = {
            "type": "http", "method": "GET", "path": "/ok", "raw_path": b"/ok", "query_string": b"",
            "headers": [], "scheme": "http", "server": ("test", 80), "client": ("127.0.0.1", 1),
            "root_path": "", "http_version": "1.1", "asgi": {"version": "3.0"},
        }
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # the client stays connected until cancelled

        async def send(message):
            if message["type"] == "http.response.start":
                started.set()
                await asyncio.Event().wait()  # a slow client: the answer is still being sent

        task = asyncio.ensure_future(app(scope, receive, send))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async_to_sync(cancel_midway)()
    assert app.executors.idle == 0


def test_idle_threads_are_stopped_after_a_while() -> None:
    from project.api.asgi_handler import ExecutorPool

    pool = ExecutorPool(idle_max=2, idle_seconds=0.2)
    executors = [pool.take() for _ in range(3)]
    threads = [executor.submit(threading.current_thread).result() for executor in executors]
    for executor in executors:
        pool.give_back(executor)
    assert pool.idle == 2  # the surplus one stopped at once
    assert pool.take() is executors[-1] and pool.idle == 1  # the warmest is lent first
    deadline = time.monotonic() + 5
    while (pool.idle or any(thread.is_alive() for thread in threads[:2])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.idle == 0
    assert not any(thread.is_alive() for thread in threads[:2])
    assert threads[2].is_alive()  # still lent out
    executors[-1].shutdown()


def test_a_thread_with_work_left_goes_back_to_the_pool_only_when_that_is_done() -> None:
    from project.api.asgi_handler import ExecutorPool

    pool = ExecutorPool()
    executor = pool.take()
    release = threading.Event()
    leftover = executor.submit(release.wait, 10)  # a sync call its cancelled request left running
    executor.when_idle(lambda: pool.give_back(executor))
    time.sleep(0.1)
    other = pool.take()
    assert pool.idle == 0 and other is not executor  # not lent while busy
    other.shutdown()
    release.set()
    leftover.result(timeout=5)
    deadline = time.monotonic() + 5
    while pool.idle == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.idle == 1 and pool.take() is executor
    executor.shutdown()


def test_the_served_application_is_the_pooled_handler() -> None:
    from project.asgi import application

    assert isinstance(application, PooledThreadASGIHandler)
