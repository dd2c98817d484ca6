"""Crons of the LangGraph-compatible API in-process: the seven operations, their checks and
scoping, and firing by the workers' sweep with a moved clock (the live, minute-long form is in
test_crons_live.py)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from runs.graphs import system_assistant_id
from runs.models import Cron, CronFiring, Run, RunStatus, Thread
from runs.services.crons import cron_fire, crons_fire_due
from tests.runs.test_api import assert_matches

pytestmark = pytest.mark.django_db

ECHO = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "tick"}]}}
EVERY_MINUTE = {**ECHO, "schedule": "* * * * *"}


def _thread(api) -> str:
    response = api.post("/threads", {}, format="json")
    assert response.status_code == 200
    return response.json()["thread_id"]


def _thread_cron(api, thread_id: str, **body) -> dict:
    response = api.post(f"/threads/{thread_id}/runs/crons", {**EVERY_MINUTE, **body}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _cron(api, **body) -> dict:
    response = api.post("/runs/crons", {**EVERY_MINUTE, **body}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _next_run(cron: dict) -> datetime:
    return datetime.fromisoformat(cron["next_run_date"])


def _runs(api, thread_id: str) -> list[dict]:
    response = api.get(f"/threads/{thread_id}/runs")
    assert response.status_code == 200
    return response.json()


def test_info_says_crons(api) -> None:
    assert api.get("/info").json()["flags"]["crons"] is True


def test_thread_cron_shape(api, alice) -> None:
    thread_id = _thread(api)
    before = timezone.now()
    cron = _thread_cron(api, thread_id, metadata={"team": "a"}, multitask_strategy="enqueue")
    assert list(cron) == [
        "cron_id", "assistant_id", "thread_id", "user_id", "end_time", "schedule", "timezone",
        "payload", "next_run_date", "metadata", "on_run_completed", "enabled", "created_at",
        "updated_at",
    ]
    # The real server answers "end_time": null (behaviour §2.8), which the spec's type omits.
    assert cron["end_time"] is None
    assert_matches("Cron", {**{k: v for k, v in cron.items() if v is not None}, "end_time": cron["created_at"]})
    assert cron["assistant_id"] == str(system_assistant_id("echo"))
    assert cron["thread_id"] == thread_id and cron["user_id"] == alice.username
    assert cron["on_run_completed"] is None and cron["timezone"] is None and cron["end_time"] is None
    assert cron["enabled"] is True and cron["metadata"] == {"team": "a"}
    assert cron["payload"]["input"] == ECHO["input"]
    assert cron["payload"]["multitask_strategy"] == "enqueue"
    # The next whole minute.
    next_run = _next_run(cron)
    assert next_run.second == 0 and next_run.microsecond == 0
    assert before < next_run <= before + timedelta(minutes=1)


def test_stateless_cron_defaults_and_timezone(api) -> None:
    cron = _cron(api, schedule="30 9 * * *", timezone="Europe/Paris", on_run_completed="keep")
    assert cron["thread_id"] is None and cron["on_run_completed"] == "keep"
    assert cron["timezone"] == "Europe/Paris"
    # 9:30 in Paris is 8:30 or 7:30 UTC, whatever the season.
    next_run = _next_run(cron)
    assert (next_run.hour, next_run.minute) in ((8, 30), (7, 30))
    assert _cron(api)["on_run_completed"] == "delete"


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"schedule": "every minute"}, 422, "Invalid schedule"),
        ({"schedule": "* * * * * *"}, 422, "five fields"),
        ({"schedule": "61 * * * *"}, 422, "Invalid schedule"),
        ({"schedule": "0 0 30 2 *"}, 422, "no date that exists"),
        ({"timezone": "Mars/Olympus"}, 422, "Invalid timezone"),
        ({"timezone": "../etc/passwd"}, 422, "Invalid timezone"),
        ({"end_time": "2026-13-45T00:00:00"}, 422, "Invalid end_time"),
        ({"end_time": "tomorrow"}, 422, "Invalid end_time"),
        ({"assistant_id": "no-such-graph"}, 422, "Invalid assistant"),
        ({"assistant_id": "00000000-0000-4000-8000-000000000000"}, 404, "not found"),
        ({"config": {"configurable": {"a": 1}}, "context": {"a": 1}}, 400, "configurable and context"),
        ({"webhook": "ftp://example.com/hook"}, 422, "webhook"),
        ({"on_run_completed": "archive"}, 422, "on_run_completed"),
        ({"schedule": None}, 422, "schedule"),
    ],
)
def test_bad_creates_are_clear_4xx(api, body, status, message) -> None:
    response = api.post("/runs/crons", {**EVERY_MINUTE, **body}, format="json")
    assert response.status_code == status, response.content
    assert message.lower() in response.json()["detail"].lower()
    assert not Cron.objects.exists()


def test_thread_cron_needs_the_users_thread(api, bob_api) -> None:
    missing = api.post(
        "/threads/00000000-0000-4000-8000-000000000000/runs/crons", EVERY_MINUTE, format="json"
    )
    assert missing.status_code == 404
    assert api.post("/threads/nope/runs/crons", EVERY_MINUTE, format="json").status_code == 422
    bobs_thread = _thread(bob_api)
    assert api.post(f"/threads/{bobs_thread}/runs/crons", EVERY_MINUTE, format="json").status_code == 404


def test_search_count_get_patch_delete(api) -> None:
    thread_id = _thread(api)
    on_thread = _thread_cron(api, thread_id, metadata={"kind": "thread"})
    stateless = _cron(api, metadata={"kind": "stateless"})
    disabled = _cron(api, enabled=False, metadata={"kind": "stateless"})
    assert disabled["enabled"] is False

    everything = api.post("/runs/crons/search", {}, format="json")
    assert everything.headers["X-Pagination-Total"] == "3"
    # Newest first by default.
    assert [c["cron_id"] for c in everything.json()] == [
        disabled["cron_id"], stateless["cron_id"], on_thread["cron_id"]
    ]

    def search(**body) -> list[str]:
        response = api.post("/runs/crons/search", body, format="json")
        assert response.status_code == 200, response.content
        return [c["cron_id"] for c in response.json()]

    assert search(thread_id=thread_id) == [on_thread["cron_id"]]
    assert search(enabled=False) == [disabled["cron_id"]]
    assert search(metadata={"kind": "stateless"}, sort_by="created_at", sort_order="asc") == [
        stateless["cron_id"], disabled["cron_id"]
    ]
    assert len(search(assistant_id=str(system_assistant_id("echo")))) == 3
    assert search(limit=1, offset=2) == [on_thread["cron_id"]]
    selected = api.post("/runs/crons/search", {"select": ["cron_id", "schedule"]}, format="json").json()
    assert all(set(c) == {"cron_id", "schedule"} for c in selected)
    # As on the real server, the assistant is named by its UUID here, not its graph id.
    assert api.post("/runs/crons/search", {"assistant_id": "echo"}, format="json").status_code == 422
    assert api.post("/runs/crons/search", {"select": ["nope"]}, format="json").status_code == 422

    assert api.post("/runs/crons/count", {}, format="json").json() == 3
    assert api.post("/runs/crons/count", {"thread_id": thread_id}, format="json").json() == 1
    assert api.post("/runs/crons/count", {"metadata": {"kind": "stateless"}}, format="json").json() == 2

    got = api.get(f"/runs/crons/{on_thread['cron_id']}")
    assert got.status_code == 200 and got.json() == on_thread

    end = (timezone.now() + timedelta(days=2)).replace(microsecond=0)
    patched = api.patch(
        f"/runs/crons/{stateless['cron_id']}",
        {
            "schedule": "0 12 * * *",
            "metadata": {"extra": 1},
            "input": {"messages": [{"role": "user", "content": "noon"}]},
            "end_time": end.isoformat(),
            "on_run_completed": "keep",
        },
        format="json",
    )
    assert patched.status_code == 200, patched.content
    body = patched.json()
    assert body["schedule"] == "0 12 * * *"
    assert body["metadata"] == {"kind": "stateless", "extra": 1}
    assert body["payload"]["input"]["messages"][0]["content"] == "noon"
    assert body["on_run_completed"] == "keep"
    assert _next_run(body).hour == 12 and datetime.fromisoformat(body["end_time"]) == end
    cleared = api.patch(f"/runs/crons/{stateless['cron_id']}", {"end_time": None}, format="json").json()
    assert cleared["end_time"] is None
    assert api.patch(f"/runs/crons/{stateless['cron_id']}", {"schedule": "x"}, format="json").status_code == 422
    # on_run_completed is a stateless cron's: a thread cron refuses it rather than ignore it.
    refused = api.patch(f"/runs/crons/{on_thread['cron_id']}", {"on_run_completed": "keep"}, format="json")
    assert refused.status_code == 422

    assert api.delete(f"/runs/crons/{stateless['cron_id']}").status_code == 204
    assert api.delete(f"/runs/crons/{stateless['cron_id']}").status_code == 404
    assert api.get(f"/runs/crons/{stateless['cron_id']}").status_code == 404
    assert api.get("/runs/crons/not-a-uuid").status_code == 422


def test_another_users_cron_is_a_404(api, bob_api) -> None:
    cron = _cron(api)
    path = f"/runs/crons/{cron['cron_id']}"
    assert bob_api.get(path).status_code == 404
    assert bob_api.patch(path, {"enabled": False}, format="json").status_code == 404
    assert bob_api.delete(path).status_code == 404
    assert bob_api.post("/runs/crons/search", {}, format="json").json() == []
    assert bob_api.post("/runs/crons/count", {}, format="json").json() == 0
    assert api.get(path).json()["enabled"] is True


def test_deleting_the_thread_or_the_assistant_deletes_its_crons(api) -> None:
    thread_id = _thread(api)
    cron = _thread_cron(api, thread_id)
    assert api.delete(f"/threads/{thread_id}").status_code == 204
    assert api.get(f"/runs/crons/{cron['cron_id']}").status_code == 404
    assistant_id = api.post("/assistants", {"graph_id": "echo"}, format="json").json()["assistant_id"]
    cron = _cron(api, assistant_id=assistant_id)
    assert cron["assistant_id"] == assistant_id
    assert api.delete(f"/assistants/{assistant_id}").status_code == 204
    assert api.get(f"/runs/crons/{cron['cron_id']}").status_code == 404


# --- firing --------------------------------------------------------------------------------------


def test_a_thread_cron_fires_once_per_time_on_its_thread(api, settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True  # nothing is sent: no worker runs here
    thread_id = _thread(api)
    cron = _thread_cron(
        api, thread_id, metadata={"job": "nightly"}, webhook="http://127.0.0.1:9/hook",
        config={"tags": ["cron"]},
    )
    first = _next_run(cron)
    assert crons_fire_due(now=first - timedelta(seconds=1)) == 0
    assert _runs(api, thread_id) == []

    assert crons_fire_due(now=first + timedelta(seconds=2)) == 1
    # The same time again (another worker's sweep): nothing more.
    assert crons_fire_due(now=first + timedelta(seconds=3)) == 0
    runs = _runs(api, thread_id)
    assert len(runs) == 1
    run = runs[0]
    assert run["assistant_id"] == cron["assistant_id"] and run["status"] == "pending"
    # A run's metadata as any run's: the assistant's, the thread's, the cron's, the ids.
    assert run["metadata"] == {
        "created_by": "system", "graph_id": "echo", "assistant_id": cron["assistant_id"], "job": "nightly",
    }
    assert run["kwargs"]["input"] == ECHO["input"]
    assert run["kwargs"]["webhook"] == "http://127.0.0.1:9/hook"
    assert run["kwargs"]["config"]["tags"] == ["cron"]
    assert _next_run(api.get(f"/runs/crons/{cron['cron_id']}").json()) == first + timedelta(minutes=1)

    assert crons_fire_due(now=first + timedelta(minutes=1, seconds=1)) == 1
    assert len(_runs(api, thread_id)) == 2
    firings = list(CronFiring.objects.filter(cron_id=cron["cron_id"]).order_by("scheduled_for"))
    assert [f.scheduled_for for f in firings] == [first, first + timedelta(minutes=1)]


def test_a_missed_window_fires_once_not_a_burst(api) -> None:
    thread_id = _thread(api)
    cron = _thread_cron(api, thread_id)
    first = _next_run(cron)
    # All workers down for an hour: 60 firing times missed.
    later = first + timedelta(hours=1, seconds=20)
    assert crons_fire_due(now=later) == 1
    assert crons_fire_due(now=later + timedelta(seconds=5)) == 0
    assert len(_runs(api, thread_id)) == 1
    next_run = _next_run(api.get(f"/runs/crons/{cron['cron_id']}").json())
    assert next_run == (later + timedelta(minutes=1)).replace(second=0, microsecond=0)


def test_disabled_crons_do_not_fire_and_enabling_counts_from_now(api) -> None:
    thread_id = _thread(api)
    cron = _thread_cron(api, thread_id, enabled=False)
    assert crons_fire_due(now=_next_run(cron) + timedelta(minutes=5)) == 0
    assert _runs(api, thread_id) == []
    enabled = api.patch(f"/runs/crons/{cron['cron_id']}", {"enabled": True}, format="json").json()
    assert _next_run(enabled) > timezone.now()


def test_end_time_stops_the_firings(api) -> None:
    thread_id = _thread(api)
    cron = _thread_cron(api, thread_id)
    first = _next_run(cron)
    # Set through PATCH: between the first and the second firing.
    api.patch(
        f"/runs/crons/{cron['cron_id']}",
        {"end_time": (first + timedelta(seconds=30)).isoformat()},
        format="json",
    )
    assert crons_fire_due(now=first + timedelta(seconds=1)) == 1
    assert api.get(f"/runs/crons/{cron['cron_id']}").json()["next_run_date"] is None
    assert crons_fire_due(now=first + timedelta(minutes=3)) == 0
    assert len(_runs(api, thread_id)) == 1
    # An end time already past: nothing is scheduled.
    past = _thread_cron(api, _thread(api), end_time=(timezone.now() - timedelta(hours=1)).isoformat())
    assert past["next_run_date"] is None


def test_a_stateless_cron_makes_a_new_thread_each_time(api) -> None:
    kept = _cron(api, on_run_completed="keep", metadata={"report": "daily"})
    deleted = _cron(api)
    now = max(_next_run(kept), _next_run(deleted)) + timedelta(seconds=1)
    assert crons_fire_due(now=now) == 2
    assert crons_fire_due(now=now + timedelta(minutes=1)) == 2
    # "keep": each firing's thread stays, with the cron's metadata.
    threads = api.post("/threads/search", {"metadata": {"report": "daily"}}, format="json").json()
    assert len(threads) == 2
    for thread in threads:
        runs = _runs(api, thread["thread_id"])
        assert len(runs) == 1 and runs[0]["metadata"] == {
            "created_by": "system", "report": "daily", "assistant_id": kept["assistant_id"],
        }
    # "delete": each run's thread goes when the run ends (the worker does it), like /runs.
    firings = CronFiring.objects.filter(cron_id=deleted["cron_id"])
    assert firings.count() == 2
    for firing in firings:
        run = Run.objects.get(pk=firing.run_id)
        assert run.thread_id == firing.thread_id and run.on_completion == "delete"
        assert run.thread.temporary


def test_a_thread_cron_follows_the_threads_multitask_strategy(api) -> None:
    thread_id = _thread(api)
    busy = api.post(f"/threads/{thread_id}/runs", ECHO, format="json")
    assert busy.status_code == 200
    cron = _thread_cron(api, thread_id, multitask_strategy="reject")
    first = _next_run(cron)
    # The thread's run is still pending: reject makes this firing create nothing...
    assert crons_fire_due(now=first + timedelta(seconds=1)) == 0
    firing = CronFiring.objects.get(cron_id=cron["cron_id"])
    assert firing.run_id is None and "Conflict" in firing.error
    # ...and the next one tries again.
    assert _next_run(api.get(f"/runs/crons/{cron['cron_id']}").json()) == first + timedelta(minutes=1)
    Run.objects.filter(thread_id=thread_id).update(status=RunStatus.SUCCESS)
    assert crons_fire_due(now=first + timedelta(minutes=1, seconds=1)) == 1

    # enqueue (the default) queues behind the active run.
    queued = _thread_cron(api, thread_id)
    assert crons_fire_due(now=_next_run(queued) + timedelta(seconds=1)) == 1
    assert [run["status"] for run in _runs(api, thread_id)] == ["pending", "pending", "success"]


def test_a_cron_read_before_another_worker_fired_it_fires_nothing(api) -> None:
    thread_id = _thread(api)
    cron = _thread_cron(api, thread_id)
    stale = Cron.objects.select_related("owner").get(pk=cron["cron_id"])
    now = _next_run(cron) + timedelta(seconds=1)
    assert crons_fire_due(now=now) == 1
    assert cron_fire(cron=stale, now=now) is None
    assert len(_runs(api, thread_id)) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweeps_fire_each_time_once(api) -> None:
    threads = [_thread(api) for _ in range(3)]
    crons = [_thread_cron(api, thread_id) for thread_id in threads]
    now = max(_next_run(cron) for cron in crons) + timedelta(seconds=1)
    start = threading.Barrier(4)
    fired: list[int] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            start.wait(timeout=10)
            fired.append(crons_fire_due(now=now))
        except BaseException as exc:  # noqa: BLE001  reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    sweepers = [threading.Thread(target=sweep) for _ in range(4)]
    for sweeper in sweepers:
        sweeper.start()
    for sweeper in sweepers:
        sweeper.join(timeout=30)
    assert not errors, errors
    assert sum(fired) == 3
    for thread_id in threads:
        assert len(_runs(api, thread_id)) == 1


def test_admin_lists_crons_and_enables_disables(client, make_user, api, django_assert_max_num_queries) -> None:
    client.force_login(make_user("staff", staff=True))
    thread_id = _thread(api)
    on_thread = _thread_cron(api, thread_id)
    for _ in range(3):
        _cron(api)
    crons_fire_due(now=_next_run(on_thread) + timedelta(seconds=1))
    with django_assert_max_num_queries(12):
        page = client.get(reverse("admin:runs_cron_changelist"))
    assert page.status_code == 200
    assert on_thread["cron_id"] in page.content.decode()
    detail = client.get(reverse("admin:runs_cron_change", args=[on_thread["cron_id"]]))
    assert detail.status_code == 200
    run_id = str(CronFiring.objects.get(cron_id=on_thread["cron_id"]).run_id)
    assert run_id in detail.content.decode()

    response = client.post(
        reverse("admin:runs_cron_changelist"),
        {"action": "disable", "index": "0", "_selected_action": [on_thread["cron_id"]]},
        follow=True,
    )
    assert "Disabled 1 cron(s)" in response.content.decode()
    assert api.get(f"/runs/crons/{on_thread['cron_id']}").json()["enabled"] is False
    response = client.post(
        reverse("admin:runs_cron_changelist"),
        {"action": "enable", "index": "0", "_selected_action": [on_thread["cron_id"]]},
        follow=True,
    )
    assert "Enabled 1 cron(s)" in response.content.decode()
    enabled = api.get(f"/runs/crons/{on_thread['cron_id']}").json()
    assert enabled["enabled"] is True and _next_run(enabled) > datetime.now(UTC)


def test_threads_prune_keeps_a_thread_with_a_cron(api) -> None:
    with_cron, without = _thread(api), _thread(api)
    _thread_cron(api, with_cron, schedule="0 0 1 * *")
    Thread.objects.update(updated_at=timezone.now() - timedelta(days=40))
    call_command("threads", "prune", "--older-than", "30", stdout=StringIO())
    assert api.get(f"/threads/{with_cron}").status_code == 200
    assert api.get(f"/threads/{without}").status_code == 404


def test_a_time_that_already_fired_is_skipped_not_stuck(api) -> None:
    thread_id = _thread(api)
    cron = _thread_cron(api, thread_id)
    first = _next_run(cron)
    assert crons_fire_due(now=first + timedelta(seconds=1)) == 1
    # Set back to a time that fired (a write that raced the firing): passed over, not retried forever.
    Cron.objects.filter(pk=cron["cron_id"]).update(next_run_date=first)
    assert crons_fire_due(now=first + timedelta(seconds=2)) == 0
    assert _next_run(api.get(f"/runs/crons/{cron['cron_id']}").json()) == first + timedelta(minutes=1)
    assert crons_fire_due(now=first + timedelta(minutes=1, seconds=1)) == 1
    assert len(_runs(api, thread_id)) == 2


def test_a_thread_cron_refuses_on_run_completed(api) -> None:
    thread_id = _thread(api)
    response = api.post(
        f"/threads/{thread_id}/runs/crons", {**EVERY_MINUTE, "on_run_completed": "keep"}, format="json"
    )
    assert response.status_code == 422
    assert "stateless crons only" in response.json()["detail"]
