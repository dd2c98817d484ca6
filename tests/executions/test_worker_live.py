"""Executions run by a real `manage.py qcluster` process, driven through the API."""

import time

import pytest

from executions.models import Execution, ExecutionStatus
from tests.conftest import wait_for

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

URL = "/api/v1/executions"


def status_of(api, execution_id: str) -> dict:
    response = api.get(f"{URL}/{execution_id}")
    assert response.status_code == 200
    return response.json()


def test_worker_runs_a_pipeline_and_its_progress_is_seen_moving(api, qcluster):
    execution_id = api.post(
        URL,
        {"type": "pipeline", "target_id": "countdown", "inputs": {"steps": 4, "step_seconds": 0.4}},
        format="json",
    ).json()["execution_id"]

    seen_steps: list[int] = []

    def finished() -> bool:
        body = status_of(api, execution_id)
        if body["status"] == "running" and body["progress"]["current_step"] not in seen_steps:
            seen_steps.append(body["progress"]["current_step"])
        return body["status"] in ("completed", "failed")

    wait_for(finished, timeout=30, interval=0.05, message=qcluster.log())

    body = status_of(api, execution_id)
    assert body["status"] == "completed", body
    assert body["outputs"] == {"remaining": 0, "steps": 4}
    assert body["progress"]["percentage"] == 100.0
    assert len(seen_steps) >= 3 and seen_steps == sorted(seen_steps)


def test_worker_stops_a_running_sleep_when_cancelled(api, qcluster):
    execution_id = api.post(
        URL, {"type": "agent", "target_id": "sleep", "inputs": {"seconds": 60}}, format="json"
    ).json()["execution_id"]
    wait_for(lambda: status_of(api, execution_id)["status"] == "running", timeout=30, message=qcluster.log())
    wait_for(lambda: status_of(api, execution_id)["progress"]["percentage"] > 0, timeout=5)

    cancel = api.post(f"{URL}/{execution_id}/cancel")
    requested = time.monotonic()

    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    execution = Execution.objects.get(pk=execution_id)
    stop = wait_for(lambda: execution.events.filter(type="worker_stopped").first(), timeout=5)
    assert time.monotonic() - requested < 2.0  # the worker stops within 1 s; slack for polling
    assert stop.data["reason"] == "cancelled"
    assert Execution.objects.get(pk=execution_id).status == ExecutionStatus.CANCELLED
    # The worker is free again: a new job runs to completion.
    echo_id = api.post(URL, {"type": "agent", "target_id": "echo", "inputs": {"n": 1}}, format="json").json()[
        "execution_id"
    ]
    wait_for(lambda: status_of(api, echo_id)["status"] == "completed", timeout=15)


def test_worker_reports_a_failing_agents_error(api, qcluster):
    execution_id = api.post(
        URL, {"type": "agent", "target_id": "fail", "inputs": {"message": "no credits left"}}, format="json"
    ).json()["execution_id"]

    wait_for(lambda: status_of(api, execution_id)["status"] == "failed", timeout=30, message=qcluster.log())

    body = status_of(api, execution_id)
    assert body["error"]["message"] == "no credits left"
    assert body["outputs"] is None


def test_a_per_execution_timeout_fails_it_with_type_timeout(api, qcluster):
    execution_id = api.post(
        URL,
        {"type": "agent", "target_id": "sleep", "inputs": {"seconds": 30}, "config": {"timeout": 1}},
        format="json",
    ).json()["execution_id"]

    wait_for(lambda: status_of(api, execution_id)["status"] == "failed", timeout=30, message=qcluster.log())

    error = status_of(api, execution_id)["error"]
    assert error["type"] == "timeout"
    assert "1 seconds" in error["message"]
