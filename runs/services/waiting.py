"""Responses that wait on a run: creating the run they follow, reading its end, its hang-ups.

``/wait``, ``/join`` and ``cancel?wait=true`` answer with the run's result once it ends
(``run_result_chunks``); ``/wait`` and ``/stream`` create the run they then follow
(``run_create_awaited``), and a client hanging up on either may cancel the run or leave a stateless
run's temporary thread to go when the run ends (``run_disconnect_handled``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from project.api.renderers import json_text
from project.db.async_db import in_executor
from project.realtime import event_hub
from project.realtime.event_hub import watch
from runs import statements
from runs.models import CancelAction, DiscardedRun, Run, RunStatus
from runs.selectors import run_finished_body
from runs.services.cancel import runs_cancel
from runs.services.idempotency import Idempotency
from runs.services.runs import run_create_idempotent, run_take_temporary_thread
from runs.services.threads import temporary_thread_discard
from runs.wakeups import run_status_channel

WAIT_POLL_SECONDS = 0.025
# With Redis, the run's writers publish every change: a read of the row this often is only the
# safety net for a lost wake-up (the event hub's own poll is another).
WAIT_PUSHED_POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 5.0


# --- creating the run a response follows ----------------------------------------------------------


class AwaitedRun(NamedTuple):
    run: Run | DiscardedRun
    created: bool
    # This response deletes the run's temporary thread once it has read the run's end.
    discard_thread: bool


def run_create_awaited(
    *, owner: Any, body: dict, idempotency: Idempotency | None, thread_id: Any = None
) -> AwaitedRun:
    """A run for a response that follows it to its end (``/wait``, ``/stream``), or with an
    ``Idempotency-Key`` the run the first such request created.

    A stateless run's temporary thread stays until the response has read the run's end, and the
    response deletes it then (unless ``on_completion: "keep"``). A replay joins the first
    request's run; the thread is the replay's to delete only if the first response is gone (it
    left the thread to go with the run's end). A ``DiscardedRun`` is a stateless run whose thread
    already went: its result, if any, is all that is left."""
    run, created = run_create_idempotent(
        owner=owner, body=body, thread_id=thread_id, on_completion="", idempotency=idempotency
    )
    if thread_id is not None or isinstance(run, DiscardedRun):
        return AwaitedRun(run, created, False)
    if created:
        return AwaitedRun(run, True, body.get("on_completion", "delete") == "delete")
    return AwaitedRun(run, False, run_take_temporary_thread(run=run))


# --- a client hanging up ------------------------------------------------------------------------


def run_after_disconnect(*, run_id: UUID, cancel: bool, temporary_thread_id: UUID | None) -> None:
    """What a client hanging up means for its run: a cancel (``on_disconnect: "cancel"``), and for
    a stateless run, that nobody will read its temporary thread: it goes when the run ends."""
    if cancel:
        runs_cancel(runs=list(Run.objects.filter(pk=run_id)), action=CancelAction.INTERRUPT)
    if temporary_thread_id is not None:
        still_running = Run.objects.filter(pk=run_id, status__in=RunStatus.active()).update(
            on_completion="delete"
        )
        if not still_running:
            temporary_thread_discard(thread_id=temporary_thread_id)


@asynccontextmanager
async def run_disconnect_handled(
    *, run_id: Any, cancel: bool, temporary_thread_id: UUID | None
) -> AsyncIterator[None]:
    """Around the body of a response following a run: a client hanging up makes the ASGI handler
    cancel the body (CancelledError) or close it (GeneratorExit); ``run_after_disconnect`` then
    runs shielded, so the hang-up's own cancel cannot stop it halfway, and the exception goes on."""
    try:
        yield
    except (asyncio.CancelledError, GeneratorExit):
        if cancel or temporary_thread_id is not None:
            await asyncio.shield(
                in_executor(run_after_disconnect)(
                    run_id=run_id, cancel=cancel, temporary_thread_id=temporary_thread_id
                )
            )
        raise


# --- reading a run's end ------------------------------------------------------------------------


def wait_poll_interval() -> float:
    if event_hub.wakeups_pushed():
        # Redis, or datagrams between the processes of this machine: the run's end wakes the
        # /wait at once, and the hub's own poll still finds what a lost wake-up did not say.
        return WAIT_PUSHED_POLL_SECONDS
    # Otherwise the hub learns of changes by polling the database (EVENT_HUB_POLL_INTERVAL),
    # slower than a /wait may take: the row is read this often too.
    return float(getattr(settings, "RUNS_WAIT_POLL_INTERVAL", WAIT_POLL_SECONDS))


def run_state_read(run_id: Any) -> tuple[str | None, bytes | None]:
    """(status, result) of the run, (None, None) once it is gone: the read a /wait repeats until
    the run ends (every 25 ms without Redis). The result is NULL until then, so it costs its bytes
    once. Written out: the ORM spent several times the statement's own time composing it."""
    with connection.cursor() as cursor:
        cursor.execute(
            statements.run_state_sql(connection.vendor), [statements.prep(Run, "run_id", run_id)]
        )
        row = cursor.fetchone()
    if row is None:
        return None, None
    return row[0], _stored_json(row[1])


def _stored_json(value: Any) -> bytes | None:
    """A JSON column's value as the JSON text stored, for a response body; None for NULL or null.

    The result of a chat graph's run is the thread's whole conversation: decoding it and encoding
    it again was a tenth of a /wait's CPU, and grew with the thread. The drivers give the text as
    it is (SQLite's column; PostgreSQL's jsonb through Django's text loader): the same JSON value,
    only its spacing and escapes are the database's."""
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):  # a driver that decodes JSON itself
        return None if value is None else _json_body(value)
    return None if value == "null" else value.encode()


def _json_body(value: Any) -> bytes:
    # Text stored before the API refused lone surrogates goes out as \ud800 escapes.
    return json_text(value, separators=(",", ":"), default=str).encode()


async def run_result_chunks(
    *,
    thread_id: Any,
    run_id: Any,
    discard_thread: bool = False,
    initial_delay: float = 0.0,
    cancel_on_disconnect: bool = False,
) -> AsyncIterator[bytes]:
    """The run's final result once it ends, as one JSON chunk, with a newline every 5 s meanwhile
    (leading whitespace is valid JSON) so proxies and clients keep the connection open.
    ``run_id`` None (a join of a missing run) answers the real server's "Run not found" body.

    The run's row is read again whenever its status channel on the event hub says it changed
    (its claim, its end, a cancel or a delete; not its events), and at least every
    ``wait_poll_interval()``.

    With ``cancel_on_disconnect`` a client hanging up cancels the run, as ``on_disconnect:
    "cancel"`` asks; with ``discard_thread`` (a stateless run's) the thread goes when the run
    ends, since nobody is left to read it; else this deletes it after reading the result."""
    poll_interval = wait_poll_interval()
    loop = asyncio.get_running_loop()
    last_write = loop.time()
    run_result = None
    async with run_disconnect_handled(
        run_id=run_id, cancel=cancel_on_disconnect, temporary_thread_id=thread_id if discard_thread else None
    ):
        if initial_delay:
            await asyncio.sleep(initial_delay)
        if run_id is not None:
            state_of = sync_to_async(run_state_read)
            async with watch(run_status_channel(run_id)) as watcher:
                while True:
                    watcher.arm()
                    run_status, run_result = await state_of(run_id)
                    if run_status is None or run_status in RunStatus.terminal():
                        break
                    if loop.time() - last_write >= KEEPALIVE_SECONDS:
                        last_write = loop.time()
                        yield b"\n"
                    keepalive_in = KEEPALIVE_SECONDS - (loop.time() - last_write)
                    await watcher.wait(max(0.0, min(poll_interval, keepalive_in)))
    if run_result is None:
        # The run is gone, or ended without a result: its thread's values, or a 404 body.
        run_result = _json_body(
            await sync_to_async(run_finished_body)(run_id=run_id, thread_id=thread_id)
        )
    if discard_thread:
        await sync_to_async(temporary_thread_discard)(thread_id=thread_id)
    yield run_result
