"""Staff admin of assistants, threads and runs; the `runs` and `threads` management commands."""

from __future__ import annotations

import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from runs import services
from runs.models import Run, RunEvent, RunStatus, Thread

pytestmark = pytest.mark.django_db

BODY = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "x"}]}}


@pytest.fixture
def staff_client(client, make_user):
    client.force_login(make_user("staff", staff=True))
    return client


def _pending_run(owner, thread=None) -> Run:
    thread = thread or services.thread_create(owner=owner)
    return services.run_create(owner=owner, body=BODY, thread_id=thread.pk)


def test_changelists_render_with_bounded_queries(staff_client, alice, django_assert_max_num_queries) -> None:
    for _ in range(5):
        _pending_run(alice)
    for name in ("runs_assistant", "runs_thread", "runs_run"):
        with django_assert_max_num_queries(12):
            response = staff_client.get(reverse(f"admin:{name}_changelist"))
        assert response.status_code == 200
    threads = staff_client.get(reverse("admin:runs_thread_changelist")).content.decode()
    assert "pending" in threads and "busy" in threads


def test_changelists_count_a_bounded_number_of_rows(staff_client, alice) -> None:
    run = _pending_run(alice)
    pages = [
        ("runs_run", {}), ("runs_run", {"status__exact": "pending"}), ("runs_run", {"q": str(run.pk)[:8]}),
        ("runs_thread", {}), ("runs_thread", {"q": "alice"}), ("runs_run", {"_facets": "1"}),
    ]
    for name, params in pages:
        with CaptureQueriesContext(connection) as captured:
            response = staff_client.get(reverse(f"admin:{name}_changelist"), params)
        assert response.status_code == 200
        unbounded = [
            q["sql"] for q in captured.captured_queries
            if ("COUNT(" in q["sql"].upper() and " LIMIT " not in q["sql"].upper())
            or "SELECT DISTINCT" in q["sql"].upper() and "runs_run" in q["sql"]
        ]
        assert unbounded == [], (name, params)
    found = staff_client.get(reverse("admin:runs_run_changelist"), {"q": str(run.pk)[:8]})
    assert str(run.pk) in found.content.decode()
    threads = staff_client.get(reverse("admin:runs_thread_changelist"), {"q": "alice"}).content.decode()
    assert str(run.thread_id) in threads


def test_run_page_shows_the_latest_events_and_links_to_all(staff_client, alice) -> None:
    run = _pending_run(alice)
    RunEvent.objects.bulk_create(
        RunEvent(run=run, seq=seq, event="values", data=f"chunk {seq:04d}") for seq in range(1, 251)
    )
    page = staff_client.get(reverse("admin:runs_run_change", args=[run.pk])).content.decode()
    assert "chunk 0250" in page and "chunk 0051" in page and "chunk 0050" not in page
    assert "The latest 200 of 250 events" in page
    every = staff_client.get(reverse("admin:runs_runevent_changelist"), {"run": str(run.pk)})
    assert every.status_code == 200 and "chunk 0001" in every.content.decode()


def test_thread_and_run_pages_show_state_and_kwargs(staff_client, alice) -> None:
    run = _pending_run(alice)
    thread_page = staff_client.get(reverse("admin:runs_thread_change", args=[run.thread_id]))
    assert thread_page.status_code == 200
    assert "state (latest checkpoint)" in thread_page.content.decode().lower()
    run_page = staff_client.get(reverse("admin:runs_run_change", args=[run.pk]))
    assert run_page.status_code == 200 and "stream_mode" in run_page.content.decode()


@pytest.mark.parametrize("action, expected", [("cancel_interrupt", "interrupted"), ("cancel_rollback", None)])
def test_admin_cancel_actions(staff_client, alice, action: str, expected: str | None) -> None:
    run = _pending_run(alice)
    done = _pending_run(alice)
    Run.objects.filter(pk=done.pk).update(status=RunStatus.SUCCESS)
    response = staff_client.post(
        reverse("admin:runs_run_changelist"),
        {"action": action, "index": "0", "_selected_action": [str(run.pk), str(done.pk)]},
        follow=True,
    )
    page = response.content.decode()
    assert "Cancelled 1 run(s)" in page and "Skipped 1 run(s)" in page
    status = Run.objects.filter(pk=run.pk).values_list("status", flat=True).first()
    assert status == expected
    assert Thread.objects.get(pk=run.thread_id).status == "idle"


def test_runs_list_and_cancel_commands(alice) -> None:
    run = _pending_run(alice)
    other = _pending_run(alice)
    out = StringIO()
    call_command("runs", "list", "--thread", str(run.thread_id), stdout=out)
    assert str(run.pk) in out.getvalue() and str(other.pk) not in out.getvalue()
    out = StringIO()
    call_command("runs", "list", "--status", "success", stdout=out)
    assert "(no runs)" in out.getvalue()

    out = StringIO()
    call_command("runs", "cancel", str(run.pk), stdout=out)
    assert f"{run.pk} cancelled (interrupt)" in out.getvalue()
    assert Run.objects.get(pk=run.pk).status == RunStatus.INTERRUPTED
    call_command("runs", "cancel", str(other.pk), "--action", "rollback", stdout=StringIO())
    assert not Run.objects.filter(pk=other.pk).exists()
    fresh = _pending_run(alice)
    err = StringIO()
    with pytest.raises(CommandError, match="2 of 3 run"):
        call_command("runs", "cancel", str(fresh.pk), str(run.pk), str(uuid.uuid4()),
                     stdout=StringIO(), stderr=err)
    assert "is interrupted" in err.getvalue() and "not found" in err.getvalue()
    assert Run.objects.get(pk=fresh.pk).status == RunStatus.INTERRUPTED
    with pytest.raises(CommandError):
        call_command("runs", "cancel", "not-a-uuid")


def test_threads_prune_command(alice) -> None:
    old = services.thread_create(owner=alice)
    busy_old = _pending_run(alice).thread
    recent = services.thread_create(owner=alice)
    long_ago = timezone.now() - timedelta(days=40)
    Thread.objects.filter(pk__in=[old.pk, busy_old.pk]).update(updated_at=long_ago)

    out = StringIO()
    call_command("threads", "prune", "--older-than", "30", "--dry-run", stdout=out)
    assert "1 thread(s) would be deleted" in out.getvalue()
    assert Thread.objects.count() == 3
    call_command("threads", "prune", "--older-than", "30", stdout=StringIO())
    assert set(Thread.objects.values_list("pk", flat=True)) == {busy_old.pk, recent.pk}
    with pytest.raises(CommandError):
        call_command("threads", "prune", "--older-than", "-1")


def test_threads_prune_walks_the_due_threads_in_batches(alice) -> None:
    long_ago = timezone.now() - timedelta(days=40)
    due = [services.thread_create(owner=alice) for _ in range(5)]
    busy = _pending_run(alice).thread
    for index, thread in enumerate([*due, busy]):
        # Two share an update time: the batches' position breaks the tie by id.
        moment = long_ago + timedelta(seconds=min(index, 3))
        Thread.objects.filter(pk=thread.pk).update(updated_at=moment)
    batches: list[int] = []

    deleted = services.threads_prune_inactive(
        older_than=timezone.now() - timedelta(days=30), batch_size=2, progress=batches.append
    )

    assert deleted == 5 and batches == [2, 4, 5]
    assert list(Thread.objects.values_list("pk", flat=True)) == [busy.pk]
    assert Run.objects.filter(thread=busy).exists()
