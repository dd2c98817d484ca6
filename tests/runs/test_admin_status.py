"""The runs admin's live status stream, in-process: who may read it, and what it sends."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from django.urls import reverse

from runs import services
from runs.models import Run, RunStatus

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "x"}]}}
URL = "/admin/runs/run/status/stream/"


def get(session: str | None, query: str) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        client = AsyncClient()
        if session:
            client.cookies["sessionid"] = session
        response = await client.get(URL + query)
        if not response.streaming:
            return response.status_code, response.content
        return response.status_code, b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(go)()


def session_of(client, user) -> str:
    client.force_login(user)
    return client.cookies["sessionid"].value


def test_only_staff_may_follow_and_ids_are_checked(client, make_user) -> None:
    assert reverse("admin:runs_run_status_stream") == URL
    assert get(None, "?ids=" + str(uuid.uuid4()))[0] == 403
    assert get(session_of(client, make_user("plain")), "?ids=" + str(uuid.uuid4()))[0] == 403
    staff = session_of(client, make_user("staff", staff=True))
    assert get(staff, "") == (400, b'{"detail": "Pass the run ids as ?ids=<uuid>,<uuid>."}')
    assert get(staff, "?ids=nope")[0] == 400


def test_finished_and_missing_runs_are_sent_once_then_done(client, make_user, alice) -> None:
    staff = session_of(client, make_user("staff", staff=True))
    thread = services.thread_create(owner=alice)
    run = services.run_create(owner=alice, body=BODY, thread_id=thread.pk)
    services.run_cancel(user=alice, thread_id=thread.pk, run_id=run.pk)  # pending -> interrupted
    missing = uuid.uuid4()

    status, body = get(staff, f"?ids={run.pk},{missing}")

    assert status == 200
    assert body == (
        b'event: status\r\ndata: {"id":"' + str(run.pk).encode()
        + b'","status":"interrupted","active":false,"duration":"-"}\r\n\r\n'
        b'event: gone\r\ndata: {"id":"' + str(missing).encode() + b'"}\r\n\r\n'
        b"event: done\r\ndata: {}\r\n\r\n"
    )


def test_pages_render_live_badges(client, make_user, alice) -> None:
    client.force_login(make_user("staff", staff=True))
    run = services.run_create(owner=alice, body=BODY, thread_id=services.thread_create(owner=alice).pk)
    assert Run.objects.get(pk=run.pk).status == RunStatus.PENDING
    for url in (reverse("admin:runs_run_changelist"), reverse("admin:runs_run_change", args=[run.pk])):
        page = client.get(url).content.decode()
        assert f'data-run-id="{run.pk}" data-run-field="status" data-active="true"' in page
        assert 'data-stream-url="/admin/runs/run/status/stream/"' in page
        assert "runs/admin_status.js" in page
