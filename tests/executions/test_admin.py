"""The executions admin as staff use it: changelist, filters, search, actions, change page, live
progress endpoint and cancel button.

Executions are created with the real service and moved through their states by the real runtime
(``claim``, ``ExecutionContext.progress``, ``execute``); ``execute`` manages its own connection,
so these tests run with real transactions.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from uuid import UUID

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from executions import runtime, services
from executions.models import Execution, ExecutionStatus

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:executions_execution_changelist")
PROGRESS = reverse("admin:executions_execution_progress")
PROGRESS_STREAM = reverse("admin:executions_execution_progress_stream")


# --- helpers -----------------------------------------------------------------------------------------


def create(
    owner, target: str = "echo", inputs: dict | None = None, type: str = "agent"
) -> Execution:
    return services.execution_create(
        owner=owner, type=type, target_id=target, inputs=inputs if inputs is not None else {"x": 1}
    )


def run_to_end(execution: Execution) -> Execution:
    runtime.execute(execution.pk)
    execution.refresh_from_db()
    return execution


def start_countdown(
    owner, *, steps: int = 5, at_step: int = 2
) -> tuple[Execution, runtime.ExecutionContext]:
    """A running `countdown` pipeline that has reported reaching ``at_step``, like a worker would."""
    execution = create(owner, "countdown", {"steps": steps, "step_seconds": 0}, type="pipeline")
    claimed = runtime.claim(execution.pk)
    assert claimed is not None
    ctx = runtime.ExecutionContext(claimed)
    ctx.progress(current_step=at_step, total_steps=steps, step_name=f"tick {steps - at_step + 1}")
    execution.refresh_from_db()
    return execution, ctx


def shown_ids(response) -> list[str]:
    """Ids of the executions the changelist shows, read from the rendered status badges."""
    html = response.content.decode()
    return re.findall(r'data-execution-id="([0-9a-f-]{36})"\s+data-execution-field="status"', html)


def badge(html: str, execution: Execution) -> str:
    match = re.search(
        rf'<span class="exec-status exec-status--(\w+)" data-execution-id="{execution.pk}" '
        r'data-execution-field="status" data-active="(\w+)">([^<]+)</span>',
        html,
    )
    assert match, f"no status badge for {execution.pk}"
    return match.group(0)


def progress_bar(html: str, execution: Execution) -> str:
    match = re.search(
        rf'<div class="exec-progress[^"]*" data-execution-id="{execution.pk}" data-execution-field="progress">'
        r".*?</span></div>",
        html,
    )
    assert match, f"no progress bar for {execution.pk}"
    return match.group(0)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def post_action(client: Client, action: str, executions: list[Execution]):
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [str(e.pk) for e in executions], "index": 0},
        follow=True,
    )


@pytest.fixture
def owner(make_user):
    return make_user("owner")


@pytest.fixture
def one_of_each(owner) -> dict[str, Execution]:
    # A worker takes the oldest pending execution: the one left pending is made last.
    running, _ = start_countdown(owner)
    completed = run_to_end(create(owner, "echo", {"n": "completed"}))
    failed = run_to_end(create(owner, "fail", {"message": "boom on purpose"}))
    cancelled = services.execution_cancel(execution=create(owner, "echo", {"n": "cancelled"}))
    pending = create(owner, "echo", {"n": "pending"})
    found = {
        "pending": pending,
        "running": running,
        "completed": completed,
        "failed": failed,
        "cancelled": cancelled,
    }
    for status, execution in found.items():
        execution.refresh_from_db()
        assert execution.status == status
    return found


# --- changelist ------------------------------------------------------------------------------------


def test_changelist_shows_status_badges_and_progress_bars(admin_client, one_of_each):
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert sorted(shown_ids(response)) == sorted(str(e.pk) for e in one_of_each.values())

    for status, execution in one_of_each.items():
        active = "true" if status in ("pending", "running") else "false"
        assert f'exec-status--{status}" data-execution-id="{execution.pk}"' in badge(
            html, execution
        )
        assert f'data-active="{active}">{ExecutionStatus(status).label}<' in badge(html, execution)

    running_bar = progress_bar(html, one_of_each["running"])
    assert 'style="width: 20.00%"' in running_bar  # step 2 of 5 started: 1 of 5 done
    assert '<span class="exec-progress__pct">20%</span>' in running_bar
    assert '<span class="exec-progress__step">step 2/5 · tick 4</span>' in running_bar
    assert '<span class="exec-progress__pct">100%</span>' in progress_bar(
        html, one_of_each["completed"]
    )
    assert '<span class="exec-progress__pct">0%</span>' in progress_bar(
        html, one_of_each["pending"]
    )

    # Owner and target columns, and the live-progress script from our own static files.
    assert ">owner<" in html and ">countdown<" in html
    assert "/static/executions/admin_progress.js" in html
    assert "/static/executions/admin.css" in html
    config = re.search(
        r'<script id="execution-progress-config" type="application/json">(.*?)</script>', html
    )
    assert config and json.loads(config.group(1)) == {
        "url": PROGRESS,
        "streamUrl": PROGRESS_STREAM,
        "intervalMs": 1000,
    }
    # Nothing can be added from the admin.
    assert reverse("admin:executions_execution_add") not in html


def test_each_filter_narrows_the_list(admin_client, owner, make_user, one_of_each):
    other = make_user("other")
    theirs = create(other, "summarize", {"text": "One sentence. Another one."})
    old = create(owner, "echo", {"n": "old"})
    last_year = timezone.now() - timedelta(days=400)
    # Test set-up only: the service stamps created_at with now, and there is no service to backdate.
    Execution.objects.filter(pk=old.pk).update(created_at=last_year)
    everything = {str(e.pk) for e in [*one_of_each.values(), theirs, old]}

    def shown(**params) -> set[str]:
        response = admin_client.get(CHANGELIST, params)
        assert response.status_code == 200, params
        return set(shown_ids(response))

    assert shown() == everything
    assert shown(status__exact="running") == {str(one_of_each["running"].pk)}
    assert shown(status__exact="failed") == {str(one_of_each["failed"].pk)}
    assert shown(type__exact="pipeline") == {str(one_of_each["running"].pk)}
    assert shown(target="summarize") == {str(theirs.pk)}
    assert shown(target="fail") == {str(one_of_each["failed"].pk)}
    assert shown(owner__id__exact=str(other.pk)) == {str(theirs.pk)}
    assert shown(created_at__year=str(last_year.year)) == {str(old.pk)}
    # The "Past 7 days" link of the sidebar's created filter.
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    week_ago, tomorrow = today - timedelta(days=7), today + timedelta(days=1)
    assert shown(created_at__gte=str(week_ago), created_at__lt=str(tomorrow)) == everything - {
        str(old.pk)
    }

    # The sidebar offers each target and each owner that has executions, and nothing else.
    html = admin_client.get(CHANGELIST).content.decode()
    for target in ("countdown", "echo", "fail", "summarize"):
        assert f'href="?target={target}"' in html
    assert "sleep" not in html
    assert f"owner__id__exact={other.pk}" in html


def whole_table_reads(queries: list[dict]) -> list[str]:
    """The statements that read every execution: a DISTINCT (filter choices, facets) or a COUNT
    not bounded by a LIMIT."""
    reads = []
    for query in queries:
        sql = query["sql"].upper()
        if "EXECUTIONS_EXECUTION" not in sql:
            continue
        if "SELECT DISTINCT" in sql or ("COUNT(" in sql and " LIMIT " not in sql):
            reads.append(query["sql"])
    return reads


@pytest.mark.parametrize(
    "params",
    [{}, {"status__exact": "failed"}, {"priority__exact": "0"}, {"q": "echo"}, {"q": "0a1b"},
     {"target": "echo", "owner__id__exact": "1"}, {"_facets": "1"}],
)
def test_changelist_never_reads_the_whole_table(admin_client, one_of_each, params):
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(CHANGELIST, params)
    assert response.status_code == 200
    assert whole_table_reads(captured.captured_queries) == []


def test_search_by_full_id_or_id_prefix_and_by_target(admin_client, owner):
    first = create(owner, "echo")
    second = create(owner, "summarize", {"text": "Hello there."})

    def found(term: str) -> set[str]:
        response = admin_client.get(CHANGELIST, {"q": term})
        assert response.status_code == 200, term
        return set(shown_ids(response))

    pk = str(first.pk)
    assert found(pk) == {pk}
    assert found(pk.upper()) == {pk}
    assert found(first.pk.hex) == {pk}  # without dashes
    assert found(pk[:8]) == {pk}
    assert found(pk[:4]) == {pk}
    assert found(pk[:13]) == {pk}  # a prefix across the first dash, dash included
    assert found(pk[:8] + pk[9:13]) == {pk}  # the same prefix without its dash
    assert found(pk[:8].upper()) == {pk}
    # A fragment from the middle reads every row's id: the search matches prefixes only.
    assert found(pk[-12:]) == set()
    assert found("summ") == {str(second.pk)}
    assert found("ECHO") == {pk}
    assert found("nothing-like-this") == set()


# --- actions ---------------------------------------------------------------------------------------


def test_cancel_action_cancels_only_active_rows_and_reports_counts(admin_client, one_of_each):
    response = post_action(admin_client, "cancel_selected", list(one_of_each.values()))
    assert response.status_code == 200
    assert (
        "Cancelled 2 executions; skipped 3 executions that were not pending or running."
        in messages_of(response)
    )

    statuses = {name: Execution.objects.get(pk=e.pk).status for name, e in one_of_each.items()}
    assert statuses == {
        "pending": "cancelled",
        "running": "cancelled",
        "completed": "completed",
        "failed": "failed",
        "cancelled": "cancelled",
    }
    # A running one is told to stop: its worker's next progress write finds it cancelled.
    assert Execution.objects.get(pk=one_of_each["running"].pk).cancelled_at is not None


def test_cancel_action_with_nothing_eligible_says_so(admin_client, one_of_each):
    response = post_action(admin_client, "cancel_selected", [one_of_each["completed"]])
    assert (
        "Cancelled 0 executions; skipped 1 execution that was not pending or running."
        in messages_of(response)
    )


def test_retry_action_creates_new_executions_only_for_finished_rows(admin_client, one_of_each):
    before = set(Execution.objects.values_list("pk", flat=True))
    response = post_action(admin_client, "retry_selected", list(one_of_each.values()))
    assert response.status_code == 200
    assert any(
        m.startswith("Retried 3 executions as new executions; skipped 2 executions")
        for m in messages_of(response)
    ), messages_of(response)

    new = Execution.objects.exclude(pk__in=before)
    assert {e.retry_of_id for e in new} == {
        one_of_each[name].pk for name in ("completed", "failed", "cancelled")
    }
    for execution in new:
        original = execution.retry_of
        assert execution.status == ExecutionStatus.PENDING
        assert (execution.type, execution.target_id, execution.inputs, execution.owner_id) == (
            original.type,
            original.target_id,
            original.inputs,
            original.owner_id,
        )


def test_actions_are_hidden_from_staff_who_may_only_view(make_user, one_of_each):
    viewer = make_user("viewer")
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_execution"))
    client = Client()
    client.force_login(viewer)

    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert len(shown_ids(response)) == 5  # staff see everyone's executions
    assert "cancel_selected" not in response.content.decode()

    post_action(client, "cancel_selected", [one_of_each["running"]])
    assert Execution.objects.get(pk=one_of_each["running"].pk).status == "running"

    running = one_of_each["running"]
    page = client.get(reverse("admin:executions_execution_change", args=[running.pk]))
    assert page.status_code == 200 and "Cancel execution" not in page.content.decode()
    cancel = client.post(reverse("admin:executions_execution_cancel", args=[running.pk]))
    assert cancel.status_code == 403
    assert Execution.objects.get(pk=running.pk).status == "running"


# --- change page -------------------------------------------------------------------------------------


def test_change_page_is_read_only_with_pretty_json_and_timeline(admin_client, owner):
    execution = run_to_end(
        create(owner, "echo", {"text": "Hi <b>there</b>", "nested": {"list": [1, 2]}})
    )
    response = admin_client.get(reverse("admin:executions_execution_change", args=[execution.pk]))
    assert response.status_code == 200
    html = response.content.decode()

    # Inputs and outputs (echo returns its inputs) as indented JSON, escaped.
    pretty = (
        "{\n  &quot;text&quot;: &quot;Hi &lt;b&gt;there&lt;/b&gt;&quot;,\n"
        "  &quot;nested&quot;: {\n    &quot;list&quot;: [\n      1,\n      2\n    ]\n  }\n}"
    )
    assert html.count(f'<pre class="exec-json">{pretty}</pre>') == 2
    assert "<b>there</b>" not in html

    # The timeline: created, claimed (running), completed, in order, with their data.
    rows = re.findall(
        r'<tr class="exec-event exec-event--(\w+)">\s*<td>(\d+)</td>\s*<td><time datetime="[^"]+">'
        r"[^<]+</time></td>\s*<td>([^<]+)</td>\s*<td><code>([^<]*)</code></td>",
        html,
    )
    assert [(kind, int(seq)) for kind, seq, _, _ in rows] == [
        ("created", 1),
        ("status", 2),
        ("status", 3),
    ]
    assert rows[0][2] == "Created"
    assert "&quot;status&quot;: &quot;completed&quot;" in rows[2][3]

    # Read-only: no form fields to edit, no save or delete, no cancel for a finished execution.
    assert 'name="_save"' not in html and 'name="_continue"' not in html
    assert "<textarea" not in html and 'name="target_id"' not in html
    assert "Cancel execution" not in html
    assert "/delete/" not in html
    assert badge(html, execution)
    assert '<span class="exec-progress__pct">100%</span>' in progress_bar(html, execution)
    # Posting the form anyway changes nothing.
    admin_client.post(
        reverse("admin:executions_execution_change", args=[execution.pk]),
        {"target_id": "sleep", "status": "pending"},
    )
    execution.refresh_from_db()
    assert (execution.target_id, execution.status) == ("echo", "completed")


def test_change_page_shows_the_error_of_a_failed_execution(admin_client, owner):
    execution = run_to_end(create(owner, "fail", {"message": "the disk is full"}))
    html = admin_client.get(
        reverse("admin:executions_execution_change", args=[execution.pk])
    ).content.decode()
    assert "&quot;message&quot;: &quot;the disk is full&quot;" in html
    assert "&quot;type&quot;: &quot;TargetFailed&quot;" in html


def test_change_page_cancel_button_only_while_active_and_it_works(admin_client, owner):
    running, ctx = start_countdown(owner)
    change_url = reverse("admin:executions_execution_change", args=[running.pk])
    cancel_url = reverse("admin:executions_execution_cancel", args=[running.pk])

    html = admin_client.get(change_url).content.decode()
    assert f'<form method="post" action="{cancel_url}"' in html
    assert "Cancel execution" in html
    assert 'style="width: 20.00%"' in progress_bar(html, running)

    assert admin_client.get(cancel_url).status_code == 405  # a link cannot cancel

    response = admin_client.post(cancel_url)
    assert response.status_code == 302 and response.url == change_url
    running.refresh_from_db()
    assert running.status == ExecutionStatus.CANCELLED and running.cancelled_at is not None
    # The worker finds out at its next progress point.
    with pytest.raises(runtime.ExecutionCancelled):
        ctx.progress(current_step=3, step_name="tick 3")

    page = admin_client.get(change_url)
    html = page.content.decode()
    assert f"Cancelled execution {running.pk}." in messages_of(page)
    assert "Cancel execution" not in html
    assert "exec-status--cancelled" in badge(html, running)

    # Cancelling a finished one through the URL explains itself instead of failing.
    completed = run_to_end(create(owner))
    response = admin_client.post(
        reverse("admin:executions_execution_cancel", args=[completed.pk]), follow=True
    )
    assert response.status_code == 200
    assert any("already completed" in m for m in messages_of(response))
    completed.refresh_from_db()
    assert completed.status == ExecutionStatus.COMPLETED

    missing = admin_client.post(reverse("admin:executions_execution_cancel", args=["not-a-uuid"]))
    assert missing.status_code == 404


def test_cancel_button_is_csrf_protected(admin_user, owner):
    running, _ = start_countdown(owner)
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(reverse("admin:executions_execution_cancel", args=[running.pk]))
    assert response.status_code == 403
    running.refresh_from_db()
    assert running.status == ExecutionStatus.RUNNING

    change_url = reverse("admin:executions_execution_change", args=[running.pk])
    page = client.get(change_url).content.decode()
    token = re.search(
        r'class="exec-cancel-form".*?name="csrfmiddlewaretoken" value="([^"]+)"', page, re.DOTALL
    ).group(1)
    response = client.post(
        reverse("admin:executions_execution_cancel", args=[running.pk]),
        {"csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302
    running.refresh_from_db()
    assert running.status == ExecutionStatus.CANCELLED


# --- live progress endpoint --------------------------------------------------------------------------


def test_progress_endpoint_returns_current_progress(admin_client, owner):
    running, ctx = start_countdown(owner, steps=4, at_step=1)
    completed = run_to_end(create(owner))

    def snapshots() -> dict[str, dict]:
        response = admin_client.get(PROGRESS, {"ids": f"{running.pk},{completed.pk}"})
        assert response.status_code == 200
        assert "no-cache" in response["Cache-Control"]
        return {item["id"]: item for item in response.json()["executions"]}

    first = snapshots()
    assert first[str(running.pk)] | {"duration": None} == {
        "id": str(running.pk),
        "status": "running",
        "status_label": "Running",
        "active": True,
        "current_step": 1,
        "total_steps": 4,
        "step_name": "tick 4",
        "percentage": 0.0,
        "percentage_label": "0%",
        "step_label": "step 1/4 · tick 4",
        "duration": None,
        "seq": 3,  # created, running, progress
    }
    assert first[str(completed.pk)]["active"] is False
    assert first[str(completed.pk)]["percentage_label"] == "100%"

    ctx.progress(current_step=3, step_name="tick 2")
    moved = snapshots()[str(running.pk)]
    assert (moved["current_step"], moved["percentage"], moved["step_label"], moved["seq"]) == (
        3,
        50.0,
        "step 3/4 · tick 2",
        4,
    )

    services.execution_cancel(execution=running)
    stopped = snapshots()[str(running.pk)]
    assert (stopped["status"], stopped["active"]) == ("cancelled", False)


def test_progress_endpoint_rejects_bad_requests_with_a_message(admin_client):
    missing = admin_client.get(PROGRESS)
    assert missing.status_code == 400 and "ids" in missing.json()["detail"]
    bad = admin_client.get(PROGRESS, {"ids": "123,not-an-id"})
    assert bad.status_code == 400 and "'123'" in bad.json()["detail"]
    too_many = admin_client.get(PROGRESS, {"ids": ",".join(str(UUID(int=i)) for i in range(201))})
    assert too_many.status_code == 400 and "200" in too_many.json()["detail"]
    unknown = admin_client.get(PROGRESS, {"ids": str(UUID(int=7))})
    assert unknown.status_code == 200 and unknown.json() == {"executions": []}
    assert admin_client.post(PROGRESS, {"ids": str(UUID(int=7))}).status_code == 405


def test_progress_endpoint_and_admin_are_forbidden_to_non_staff(client, make_user, owner):
    running, _ = start_countdown(owner)
    anonymous = client.get(PROGRESS, {"ids": str(running.pk)})
    assert anonymous.status_code == 403 and anonymous.json() == {"detail": "Staff only."}

    client.force_login(owner)  # a regular user, owner of the execution
    response = client.get(PROGRESS, {"ids": str(running.pk)})
    assert response.status_code == 403
    assert "step" not in response.content.decode()

    changelist = client.get(CHANGELIST)
    assert changelist.status_code == 302 and "/admin/login/" in changelist.url
    cancel = client.post(reverse("admin:executions_execution_cancel", args=[running.pk]))
    assert cancel.status_code == 302 and "/admin/login/" in cancel.url
    running.refresh_from_db()
    assert running.status == ExecutionStatus.RUNNING


# --- queries -----------------------------------------------------------------------------------------


def test_changelist_query_count_does_not_grow_with_rows(
    admin_client, django_user_model, django_assert_max_num_queries
):
    def populate(count: int, prefix: str) -> None:
        for i in range(count):
            # No password: hashing one per owner would dominate the test's run time.
            user = django_user_model.objects.create(username=f"{prefix}{i}")
            execution = create(user, "echo", {"i": i})
            if i % 3 == 0:
                run_to_end(execution)
            elif i % 3 == 1:
                services.execution_cancel(execution=execution)

    populate(3, "few")
    with CaptureQueriesContext(connection) as few:
        assert len(shown_ids(admin_client.get(CHANGELIST))) == 3
    populate(40, "many")
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = admin_client.get(CHANGELIST)
    assert len(shown_ids(response)) == 43
    # The owner of every row is on the page, read through the join.
    assert "many39" in response.content.decode()


def test_change_page_shows_the_latest_events_and_links_to_all(admin_client, owner):
    from executions.admin import TIMELINE_LIMIT
    from executions.models import ExecutionEvent

    execution = create(owner, "echo")
    first = execution.event_seq + 1
    last = first + TIMELINE_LIMIT + 9
    ExecutionEvent.objects.bulk_create(
        ExecutionEvent(execution=execution, seq=seq, type="log", data={"line": f"line {seq:04d}"})
        for seq in range(first, last + 1)
    )
    Execution.objects.filter(pk=execution.pk).update(event_seq=last)

    page = admin_client.get(reverse("admin:executions_execution_change", args=[execution.pk]))
    html = page.content.decode()
    assert f"line {last:04d}" in html and f"line {first:04d}" not in html
    link = re.search(r'<a href="([^"]+)">all of them</a>', html)
    assert link is not None
    every = admin_client.get(link.group(1).replace("&amp;", "&")).content.decode()
    assert f"line {first:04d}" in every
