"""`manage.py schedules …`, `manage.py webhooks prune` and the schedules admin as staff use them."""

from __future__ import annotations

import io
import re
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from executions.models import Execution
from schedules.firing import schedules_fire_due
from schedules.models import Schedule
from schedules.services import schedule_create, schedule_trigger
from webhooks.models import WebhookAttempt, WebhookMessage, WebhookStatus

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:schedules_schedule_changelist")


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_failing(*args: str) -> tuple[BaseException, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises((CommandError, SystemExit)) as caught:
        call_command(*args, stdout=out, stderr=err)
    return caught.value, out.getvalue(), err.getvalue()


def make(owner, target_id: str = "echo", **fields) -> Schedule:
    fields.setdefault("cron", "*/5 * * * *")
    return schedule_create(owner=owner, type="agent", target_id=target_id, **fields)


# --- manage.py schedules ------------------------------------------------------------------------


def test_list_shows_each_schedule_with_its_next_run(alice):
    enabled = make(alice, inputs={}, timezone_name="Europe/Paris")
    paused = make(alice, "sleep", inputs={"seconds": 1}, enabled=False)

    out, _ = run("schedules", "list")

    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TARGET", "CRON", "TIMEZONE", "STATE", "OVERLAP", "NEXT", "RUN",
                                "LAST", "RUN", "OWNER"]
    assert lines[1].startswith(str(enabled.pk)) and "agent:echo" in lines[1]
    assert "Europe/Paris" in lines[1] and "enabled" in lines[1] and "alice" in lines[1]
    assert lines[2].startswith(str(paused.pk)) and "paused" in lines[2]
    assert run("schedules", "list", "--paused")[0].count("\n") == 2
    assert run("schedules", "list", "--target", "echo")[0].count("\n") == 2


def test_list_says_so_when_there_is_none():
    assert run("schedules", "list") == ("No schedules.\n", "")


def test_pause_resume_and_trigger(alice):
    schedule = make(alice)

    out, _ = run("schedules", "pause", str(schedule.pk))
    assert out == f"{schedule.pk}: paused\n"
    schedule.refresh_from_db()
    assert not schedule.enabled and schedule.next_run_at is None
    assert run("schedules", "pause", str(schedule.pk))[0] == f"{schedule.pk}: already paused\n"
    assert schedules_fire_due(now=timezone.now() + timedelta(days=1)) == 0

    out, _ = run("schedules", "resume", str(schedule.pk))
    schedule.refresh_from_db()
    assert out.startswith(f"{schedule.pk}: resumed, next run ") and schedule.next_run_at

    out, _ = run("schedules", "trigger", str(schedule.pk))
    [execution] = Execution.objects.filter(schedule=schedule)
    assert out == f"{schedule.pk}: started execution {execution.pk}\n"


def test_unknown_ids_fail_with_exit_status_1_and_the_rest_still_happens(alice):
    schedule = make(alice)
    missing = uuid.uuid4()

    error, out, err = run_failing("schedules", "pause", str(missing), str(schedule.pk))

    assert str(error) == "1 of 2 could not be handled."
    assert err == f"{missing}: error: no such schedule\n"
    assert out == f"{schedule.pk}: paused\n"


def test_a_malformed_id_is_a_usage_error():
    error, _, _ = run_failing("schedules", "trigger", "nope")
    assert "'nope' is not a schedule id" in str(error)


def test_trigger_of_a_schedule_whose_target_went_away_says_why(alice):
    schedule = make(alice)
    Schedule.objects.filter(pk=schedule.pk).update(target_id="gone")

    error, _, err = run_failing("schedules", "trigger", str(schedule.pk))

    assert "No agent named 'gone'" in err
    assert not Execution.objects.exists()


# --- manage.py webhooks prune -------------------------------------------------------------------


def message(status: str, days_ago: float) -> WebhookMessage:
    row = WebhookMessage.objects.create(
        source="execution", source_id=uuid.uuid4(), url="https://example.com/hook",
        event_type="execution.completed", payload={}, status=status, max_attempts=5,
    )
    WebhookAttempt.objects.create(message=row, number=1, started_at=timezone.now(), duration_ms=1.0)
    WebhookMessage.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    return row


def test_webhooks_prune_deletes_old_finished_messages_and_their_attempts():
    old_delivered = message(WebhookStatus.DELIVERED, 10)
    old_failed = message(WebhookStatus.FAILED, 10)
    old_pending = message(WebhookStatus.PENDING, 10)  # still being retried: kept
    recent = message(WebhookStatus.DELIVERED, 1)

    out, _ = run("webhooks", "prune", "--older-than", "7", "--dry-run")
    assert out == "Would delete 2 webhook messages created more than 7 days ago (dry run, nothing deleted).\n"
    assert WebhookMessage.objects.count() == 4

    out, _ = run("webhooks", "prune", "--older-than", "7")
    assert out == "Deleted 2 webhook messages created more than 7 days ago.\n"
    assert set(WebhookMessage.objects.values_list("pk", flat=True)) == {old_pending.pk, recent.pk}
    assert not WebhookAttempt.objects.filter(message_id__in=[old_delivered.pk, old_failed.pk]).exists()


def test_webhooks_prune_needs_a_positive_age():
    error, _, _ = run_failing("webhooks", "prune", "--older-than", "0")
    assert "must be a positive number of days" in str(error)


# --- the admin ----------------------------------------------------------------------------------


@pytest.fixture
def staff(make_user) -> Client:
    client = Client()
    client.force_login(make_user("admin", staff=True))
    return client


def test_changelist_shows_next_and_last_run_in_a_fixed_number_of_queries(
    staff, alice, django_assert_max_num_queries
):
    for n in range(5):
        make(alice, inputs={"n": n})
    with django_assert_max_num_queries(8):
        response = staff.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("executions it started") == 5
    assert "Next run at" in html and "Last run at" in html


def test_enable_disable_and_run_now_actions(staff, alice):
    first, second = make(alice), make(alice, enabled=False)

    response = staff.post(
        CHANGELIST, {"action": "disable_selected", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )
    assert "Disabled 1 schedule." in response.content.decode()
    assert not Schedule.objects.filter(enabled=True).exists()

    response = staff.post(
        CHANGELIST, {"action": "enable_selected", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )
    assert "Enabled 2 schedules." in response.content.decode()
    assert Schedule.objects.filter(enabled=True, next_run_at__isnull=False).count() == 2

    Schedule.objects.filter(pk=second.pk).update(target_id="gone")
    response = staff.post(
        CHANGELIST, {"action": "run_now", "_selected_action": [first.pk, second.pk]}, follow=True
    )
    html = response.content.decode()
    assert "Started 1 execution." in html and "No agent named &#x27;gone&#x27;" in html
    assert Execution.objects.filter(schedule=first).count() == 1


def test_change_page_lists_recent_firings_and_executions_and_links_to_all(staff, alice):
    schedule = make(alice)
    execution = schedule_trigger(schedule=schedule)
    schedules_fire_due(now=schedule.next_run_at)  # skipped: the triggered one is still pending

    html = staff.get(reverse("admin:schedules_schedule_change", args=[schedule.pk])).content.decode()

    assert reverse("admin:executions_execution_change", args=[execution.pk]) in html
    assert "manual" in html and "skipped" in html and "still pending or running" in html
    link = re.search(r'href="([^"]+\?schedule=[^"]+)"', html).group(1)
    listed = staff.get(link.replace("&amp;", "&"))
    assert listed.status_code == 200
    assert str(execution.pk) in listed.content.decode()


def test_the_execution_page_links_back_to_its_schedule(staff, alice):
    schedule = make(alice)
    execution = schedule_trigger(schedule=schedule)
    html = staff.get(reverse("admin:executions_execution_change", args=[execution.pk])).content.decode()
    assert reverse("admin:schedules_schedule_change", args=[schedule.pk]) in html


def test_staff_without_change_permission_get_no_actions(make_user, alice):
    from django.contrib.auth.models import Permission

    viewer = make_user("viewer")
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_schedule", content_type__app_label="schedules"))
    client = Client()
    client.force_login(viewer)
    schedule = make(alice)

    response = client.post(
        CHANGELIST, {"action": "run_now", "_selected_action": [schedule.pk]}, follow=True
    )
    assert not Execution.objects.exists()
    assert response.status_code == 200
