"""The scheduler as users see it: priorities and concurrency limits, through the API and the
worker's claim (in-process, on whichever database the suite runs on)."""

from collections.abc import Iterator

import pytest

from executions import runtime, services
from executions.models import Execution, ExecutionStatus
from executions.registry import agent, registry
from executions.scheduling import execution_claim

pytestmark = pytest.mark.django_db

URL = "/api/v1/executions"


def create(client, **body):
    body.setdefault("type", "agent")
    body.setdefault("target_id", "echo")
    return client.post(URL, body, format="json")


def drain(message_ids: list[str]) -> list[str]:
    """Deliver one message per id, in order, as a worker would; the ids in the order they ran."""
    for message in message_ids:
        runtime.execute(message)
    return [
        str(pk) for pk in Execution.objects.filter(started_at__isnull=False)
        .order_by("started_at").values_list("id", flat=True)
    ]


# --- priorities ----------------------------------------------------------------------------------


def test_priority_is_stored_shown_and_defaults_to_zero(api):
    urgent = create(api, priority=7).json()["execution_id"]
    normal = create(api).json()["execution_id"]

    assert api.get(f"{URL}/{urgent}").json()["priority"] == 7
    assert api.get(f"{URL}/{normal}").json()["priority"] == 0


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"priority": 11}, "priority"),
        ({"priority": -11}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"config": {"priority": "low"}}, "config.priority"),
        ({"config": {"priority": 42}}, "config.priority"),
        ({"priority": 1, "config": {"priority": 2}}, "priority"),
    ],
)
def test_a_priority_out_of_range_or_not_a_number_is_a_400_naming_it(api, body, named):
    response = create(api, **body)

    assert response.status_code == 400, response.json()
    assert named in response.json()["detail"]
    assert not Execution.objects.exists()


def test_config_priority_is_honoured_as_the_priority(api):
    execution_id = create(api, config={"priority": 3}).json()["execution_id"]

    assert api.get(f"{URL}/{execution_id}").json()["priority"] == 3


def test_a_high_priority_execution_created_behind_a_full_queue_runs_first():
    queued = [str(services.execution_create(type="agent", target_id="echo").pk) for _ in range(30)]
    urgent = str(services.execution_create(type="agent", target_id="echo", priority=5).pk)

    order = drain([*queued, urgent])

    assert order == [urgent, *queued]
    assert Execution.objects.filter(status=ExecutionStatus.COMPLETED).count() == 31


def test_fifo_within_a_priority_and_higher_priorities_first():
    created = []
    for priority in [0, -3, 2, 0, 2, -3, 10, 0]:
        execution = services.execution_create(type="agent", target_id="echo", priority=priority)
        created.append((priority, str(execution.pk)))

    order = drain([pk for _, pk in created])

    expected = [pk for _, pk in sorted(created, key=lambda item: -item[0])]  # stable: FIFO within
    assert order == expected


def test_a_cancelled_pending_execution_never_starts_under_the_claim():
    first = services.execution_create(type="agent", target_id="echo", priority=9)
    second = services.execution_create(type="agent", target_id="echo")
    services.execution_cancel(execution=first)

    assert runtime.execute(first.pk) == "completed"  # its message ran the next in line
    assert runtime.execute(second.pk) == "skipped"

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == ExecutionStatus.CANCELLED and first.attempts == 0
    assert first.started_at is None
    assert second.status == ExecutionStatus.COMPLETED


def test_a_message_only_claims_executions_with_its_own_timeout():
    # django-q2 arms the message's timeout: a worker must not run a row that times out otherwise.
    plain = services.execution_create(type="agent", target_id="echo")
    timed = services.execution_create(type="agent", target_id="echo", priority=5, config={"timeout": 5})

    assert runtime.execute(plain.pk) == "completed"

    plain.refresh_from_db()
    timed.refresh_from_db()
    assert plain.status == ExecutionStatus.COMPLETED
    assert timed.status == ExecutionStatus.PENDING
    assert runtime.execute(timed.pk) == "completed"


def test_list_filters_and_orders_by_priority(api):
    ids = {priority: create(api, priority=priority).json()["execution_id"] for priority in (-2, 0, 4)}

    def listed(query: str) -> list[str]:
        response = api.get(f"{URL}?{query}")
        assert response.status_code == 200, response.json()
        return [row["execution_id"] for row in response.json()["executions"]]

    assert listed("ordering=-priority") == [ids[4], ids[0], ids[-2]]
    assert listed("ordering=priority") == [ids[-2], ids[0], ids[4]]
    assert set(listed("priority=4&priority=-2")) == {ids[4], ids[-2]}
    assert set(listed("priority_min=0")) == {ids[0], ids[4]}
    assert listed("priority_max=-1") == [ids[-2]]
    assert api.get(f"{URL}?priority=99").status_code == 400
    assert api.get(f"{URL}?priority_min=high").status_code == 400


def test_retry_keeps_the_priority():
    execution = services.execution_create(type="agent", target_id="echo", priority=-4)
    runtime.execute(execution.pk)
    execution.refresh_from_db()

    assert services.execution_retry(execution=execution).priority == -4


# --- concurrency limits --------------------------------------------------------------------------


@pytest.fixture
def limited() -> Iterator[str]:
    @agent("limited_pair", concurrency=2, max_attempts=3, retry_backoff=0, retry_on=["TargetFailed"])
    def limited_pair(inputs, ctx):
        return {}

    try:
        yield "limited_pair"
    finally:
        registry.unregister("agent", "limited_pair")


def test_a_target_never_runs_more_than_its_concurrency_and_the_rest_wait_pending(limited):
    rows = [services.execution_create(type="agent", target_id=limited) for _ in range(4)]
    other = services.execution_create(type="agent", target_id="echo")

    claimed = [execution_claim(hint=row.pk, worker="w") for row in rows]

    # The third message, finding the target full, ran what else could run; the fourth, nothing.
    assert [row.pk if row else None for row in claimed] == [rows[0].pk, rows[1].pk, other.pk, None]
    assert Execution.objects.filter(target_id=limited, status=ExecutionStatus.RUNNING).count() == 2
    assert Execution.objects.filter(target_id=limited, status=ExecutionStatus.PENDING).count() == 2

    finished = claimed[0]
    assert finished is not None
    runtime.execution_finish(
        claim=runtime.ExecutionContext(finished).claim, status=ExecutionStatus.COMPLETED, outputs={}
    )
    assert execution_claim(hint=rows[3].pk, worker="w") is not None
    assert Execution.objects.filter(target_id=limited, status=ExecutionStatus.RUNNING).count() == 2


def test_the_end_of_a_limited_execution_wakes_the_next_in_line(limited, settings):
    from django_q.brokers import get_broker

    rows = [services.execution_create(type="agent", target_id=limited) for _ in range(3)]
    holding = execution_claim(hint=rows[0].pk, worker="w")
    assert holding is not None and execution_claim(hint=rows[1].pk, worker="w") is not None
    broker = get_broker()
    before = broker.queue_size()

    assert runtime.execute(rows[2].pk) == "skipped"  # full: this message is spent
    assert Execution.objects.get(pk=rows[2].pk).status == ExecutionStatus.PENDING
    # A worker finishing one of the running pair frees a slot and sends a message for rows[2].
    runtime.execution_finish(
        claim=runtime.ExecutionContext(holding).claim, status=ExecutionStatus.COMPLETED, outputs={}
    )
    from executions.scheduling import execution_slot_freed

    execution_slot_freed(holding)
    assert broker.queue_size() == before + 1


def test_running_executions_per_user_are_capped_and_the_rest_wait(settings, alice, bob):
    settings.EXECUTIONS_MAX_RUNNING_PER_USER = 1
    a1 = services.execution_create(owner=alice, type="agent", target_id="echo")
    a2 = services.execution_create(owner=alice, type="agent", target_id="echo")
    b1 = services.execution_create(owner=bob, type="agent", target_id="echo")

    assert execution_claim(hint=a1.pk, worker="w") is not None
    claimed = execution_claim(hint=a2.pk, worker="w")

    assert claimed is not None and claimed.pk == b1.pk
    assert Execution.objects.get(pk=a2.pk).status == ExecutionStatus.PENDING
    assert execution_claim(hint=a2.pk, worker="w") is None


def test_targets_list_shows_concurrency_and_retry_policy(api, limited):
    targets = {target["id"]: target for target in api.get("/api/v1/targets").json()["targets"]}

    assert targets[limited]["concurrency"] == 2
    assert targets[limited]["retry"] == {
        "max_attempts": 3, "retry_backoff": 0.0, "retry_on": ["TargetFailed"]
    }
    assert targets["echo"]["concurrency"] is None
    assert targets["echo"]["retry"]["max_attempts"] == 1


# --- retry policy --------------------------------------------------------------------------------


@pytest.fixture
def flaky() -> Iterator[str]:
    from executions.runtime import TargetFailed

    @agent("flaky_policy", max_attempts=3, retry_backoff=0, retry_on=["TargetFailed"])
    def flaky_policy(inputs, ctx):
        if inputs.get("crash"):
            raise KeyError("not retried")
        raise TargetFailed("try again")

    try:
        yield "flaky_policy"
    finally:
        registry.unregister("agent", "flaky_policy")


def test_a_targets_retry_policy_retries_the_error_types_it_names(flaky):
    retried = services.execution_create(type="agent", target_id=flaky)
    crashed = services.execution_create(type="agent", target_id=flaky, inputs={"crash": True})

    for _ in range(5):
        runtime.execute(retried.pk)

    retried.refresh_from_db()
    crashed.refresh_from_db()
    assert (retried.status, retried.attempts, retried.error["type"]) == ("failed", 3, "TargetFailed")
    # A KeyError is not in retry_on: one attempt.
    assert (crashed.status, crashed.attempts, crashed.error["type"]) == ("failed", 1, "KeyError")


def test_a_request_may_override_the_targets_max_attempts(flaky):
    execution = services.execution_create(
        type="agent", target_id=flaky, config={"max_attempts": 1}
    )

    assert runtime.execute(execution.pk) == "failed"
    execution.refresh_from_db()
    assert execution.error["type"] == "TargetFailed" and execution.attempts == 1
