"""Webhooks sent by a real `manage.py qcluster` to a real receiver on 127.0.0.1, for executions
and runs created through the API: once per job end, signed, retried, and never in the job's way."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from django.conf import settings
from django.db import connection
from standardwebhooks import Webhook

from executions.models import Execution
from runs.models import Run, RunStatus
from runs.services.crons import crons_fire_due
from tests.conftest import Cluster, figure, wait_for
from tests.webhooks.receiver import Receiver
from webhooks.models import WebhookMessage, WebhookStatus

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
URL = "/api/v1/executions"
# The keys of the Agent Server's run webhook (langgraph-behaviour.md §2.9).
RUN_WEBHOOK_KEYS = {
    "assistant_id", "created_at", "kwargs", "metadata", "multitask_strategy", "run_ended_at",
    "run_id", "run_started_at", "status", "thread_id", "updated_at", "values", "webhook_sent_at",
    "langsmith_session_name",
}
LATENCIES: list[float] = []


@pytest.fixture(scope="module")
def cluster(django_db_setup) -> Iterator[Cluster]:
    started = Cluster(
        workers=2, WEBHOOK_ALLOW_PRIVATE="1", WEBHOOK_SECRET=SECRET, WEBHOOK_RETRY_BACKOFF="0.2",
        EXECUTIONS_SWEEP_INTERVAL="0.2",
    )
    try:
        yield started
    finally:
        started.stop()
        if LATENCIES:
            stack = f"{connection.vendor}, {'Redis' if settings.REDIS_URL else 'ORM'} broker"
            figure(
                f"webhook delivery latency after a job ends ({stack}, machine shared): "
                f"p50 {statistics.median(LATENCIES) * 1000:.0f} ms over {len(LATENCIES)} jobs"
            )


@pytest.fixture
def private_allowed(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served = Receiver()
    yield served
    served.close()


def _verified(request) -> dict:
    return Webhook(SECRET).verify(request.body, request.headers)


def _execution(api, receiver_url: str, target: str, inputs: dict) -> str:
    created = api.post(
        URL, {"type": "agent", "target_id": target, "inputs": inputs, "webhook": receiver_url},
        format="json",
    )
    assert created.status_code == 201, created.content
    return created.json()["execution_id"]


def _ended(api, execution_id: str) -> dict:
    def ended() -> dict | None:
        body = api.get(f"{URL}/{execution_id}").json()
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    return wait_for(ended, timeout=30, message=f"execution {execution_id} to end")


def _latency(sent_at: datetime, ended_at: str) -> None:
    LATENCIES.append((sent_at - datetime.fromisoformat(ended_at.replace("Z", "+00:00"))).total_seconds())


@pytest.mark.parametrize(
    ("target", "inputs", "event_type"),
    [("echo", {"hello": "world"}, "execution.completed"), ("fail", {"message": "no"}, "execution.failed")],
)
def test_an_execution_that_ends_posts_its_webhook_once(
    api, cluster, private_allowed, receiver, target, inputs, event_type
):
    execution_id = _execution(api, receiver.url, target, inputs)
    final = _ended(api, execution_id)
    [request] = receiver.wait_for(1)

    body = _verified(request)
    assert body["type"] == event_type
    # data is the execution exactly as GET returns it (status_url: the path, without the host).
    assert {**body["data"], "status_url": final["status_url"]} == final
    assert final["status_url"].endswith(body["data"]["status_url"])
    assert body["timestamp"] == final["completed_at"]
    _latency(request.at, final["completed_at"])

    record = wait_for(
        lambda: (hooks := api.get(f"{URL}/{execution_id}/webhooks").json()["webhooks"])
        and hooks[0]["status"] == "delivered" and hooks,
        timeout=10,
    )
    [webhook] = record
    assert webhook["webhook_id"] == request.headers["webhook-id"]
    assert webhook["type"] == event_type and webhook["url"] == receiver.url
    assert [(d["attempt"], d["status_code"], d["response"]) for d in webhook["deliveries"]] == [(1, 200, "thanks")]
    time.sleep(0.5)  # the sweep runs every 0.2 s: nothing is sent twice
    assert len(receiver.received) == 1


def test_a_cancelled_execution_posts_execution_cancelled_once(api, cluster, private_allowed, receiver):
    execution_id = _execution(api, receiver.url, "sleep", {"seconds": 30})
    wait_for(lambda: api.get(f"{URL}/{execution_id}").json()["status"] == "running", timeout=30)
    assert api.post(f"{URL}/{execution_id}/cancel").status_code == 200
    [request] = receiver.wait_for(1)
    body = _verified(request)
    assert body["type"] == "execution.cancelled"
    assert body["data"]["status"] == "cancelled"
    # The worker stops too and sees the same end: still one message, one POST.
    wait_for(lambda: Execution.objects.get(pk=execution_id).events.filter(type="worker_stopped").exists(), timeout=10)
    time.sleep(0.5)
    assert len(receiver.received) == 1


def test_a_receiver_failing_three_times_gets_the_fourth_attempt(api, cluster, private_allowed):
    flaky = Receiver(answers=(500, 502, 503, 200))
    try:
        execution_id = _execution(api, flaky.url, "echo", {})
        received = flaky.wait_for(4, timeout=30)
        time.sleep(0.6)  # a fifth would come within 0.2 s backoff + 0.2 s sweep
        assert len(flaky.received) == 4
    finally:
        flaky.close()
    assert len({r.headers["webhook-id"] for r in received}) == 1  # one message, four attempts
    assert all(_verified(r)["data"]["execution_id"] == execution_id for r in received)
    [webhook] = api.get(f"{URL}/{execution_id}/webhooks").json()["webhooks"]
    assert webhook["status"] == "delivered" and webhook["attempts"] == 4
    assert [(d["attempt"], d["status_code"], d["error"]) for d in webhook["deliveries"]] == [
        (1, 500, "HTTP 500"), (2, 502, "HTTP 502"), (3, 503, "HTTP 503"), (4, 200, ""),
    ]


def test_a_receiver_that_never_answers_delays_no_job(api, cluster, private_allowed):
    stuck = Receiver(hang=True)
    try:
        with_hooks = [_execution(api, stuck.url, "echo", {"n": n}) for n in range(4)]
        stuck.wait_for(4, timeout=20)  # every worker process now has senders waiting on it
        started = time.monotonic()
        created = [
            api.post(URL, {"type": "agent", "target_id": "echo", "inputs": {"n": n}}, format="json")
            .json()["execution_id"]
            for n in range(6)
        ]
        for execution_id in created:
            assert _ended(api, execution_id)["status"] == "completed"
        elapsed = time.monotonic() - started
        # The stuck attempts wait out WEBHOOK_TIMEOUT (10 s); the jobs behind them do not.
        assert elapsed < 5, elapsed
        assert all(api.get(f"{URL}/{e}").json()["status"] == "completed" for e in with_hooks)
        assert WebhookMessage.objects.filter(status=WebhookStatus.PENDING).count() == 4
    finally:
        stuck.close()


def _run_ended(run_id: str) -> Run:
    return wait_for(
        lambda: Run.objects.filter(pk=run_id, status__in=RunStatus.terminal()).first(),
        timeout=30, message=f"run {run_id} to end",
    )


def test_a_thread_run_posts_the_run_with_its_final_values(api, cluster, private_allowed, receiver):
    thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
    created = api.post(
        f"/threads/{thread_id}/runs",
        {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]},
         "webhook": receiver.url},
        format="json",
    )
    assert created.status_code == 200, created.content
    run = _run_ended(created.json()["run_id"])
    [request] = receiver.wait_for(1)

    body = _verified(request)
    assert set(body) == RUN_WEBHOOK_KEYS
    assert (body["run_id"], body["thread_id"], body["status"]) == (str(run.pk), thread_id, "success")
    assert body["kwargs"]["webhook"] == receiver.url
    assert [m["content"] for m in body["values"]["messages"]] == ["hi", "echo: hi"]
    assert body["values"] == api.get(f"/threads/{thread_id}/state").json()["values"]
    assert body["run_started_at"] and body["run_ended_at"] and body["webhook_sent_at"]
    _latency(request.at, body["run_ended_at"])
    time.sleep(0.5)
    assert len(receiver.received) == 1


def test_a_stateless_run_posts_null_values_once_its_thread_is_gone(api, cluster, private_allowed, receiver):
    created = api.post(
        "/runs",
        {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "x"}]}, "webhook": receiver.url},
        format="json",
    )
    assert created.status_code == 200, created.content
    [request] = receiver.wait_for(1)
    body = _verified(request)
    assert body["status"] == "success" and body["values"] is None
    assert body["run_id"] == created.json()["run_id"]


def test_a_cron_run_posts_its_webhook_like_any_run(api, cluster, private_allowed, receiver):
    thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
    cron = api.post(
        f"/threads/{thread_id}/runs/crons",
        {"assistant_id": "echo", "schedule": "0 0 * * *", "webhook": receiver.url,
         "input": {"messages": [{"role": "user", "content": "nightly"}]}},
        format="json",
    )
    assert cron.status_code == 200, cron.content
    # Fired as the workers' sweep does at midnight, with the clock moved there.
    assert crons_fire_due(now=datetime.fromisoformat(cron.json()["next_run_date"])) == 1
    [request] = receiver.wait_for(1)
    body = _verified(request)
    assert set(body) == RUN_WEBHOOK_KEYS
    assert (body["thread_id"], body["status"]) == (thread_id, "success")
    assert [m["content"] for m in body["values"]["messages"]] == ["nightly", "echo: nightly"]
    time.sleep(0.5)
    assert len(receiver.received) == 1


def test_a_failed_run_posts_status_error_with_the_error(api, cluster, private_allowed, receiver):
    thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
    api.post(
        f"/threads/{thread_id}/runs",
        {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "fail"}]},
         "webhook": receiver.url},
        format="json",
    )
    [request] = receiver.wait_for(1)
    body = _verified(request)
    assert body["status"] == "error"
    assert body["error"] == {"error": "ValueError", "message": "boom requested"}
    assert set(body) == RUN_WEBHOOK_KEYS | {"error"}
    time.sleep(0.5)
    assert len(receiver.received) == 1


def test_delivery_latency_after_a_job_ends(api, cluster, private_allowed, receiver):
    """The figure the issue asks for: from an execution's completed_at to the receiver's POST."""
    for count in range(1, 13):
        execution_id = _execution(api, receiver.url, "echo", {"n": count})
        final = _ended(api, execution_id)
        request = receiver.wait_for(count)[-1]
        assert _verified(request)["data"]["execution_id"] == execution_id
        _latency(request.at, final["completed_at"])
