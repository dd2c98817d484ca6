"""A target's concurrency limit under load: 100 executions of a target limited to 2, on a cluster
of 4 workers, sampled while they run."""

import time

import pytest
from django.db.models import Max, Min

from executions import services
from executions.models import Execution, ExecutionStatus
from executions.registry import agent, registry
from tests.conftest import Cluster, wait_for
from tests.faults.conftest import figure
from tests.faults.limited import PAIR_LIMITED, pair_limited

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_target_limited_to_2_never_runs_more_than_2_on_4_workers_and_all_finish():
    agent(PAIR_LIMITED, concurrency=2)(pair_limited)  # the workers register it from agents.py
    try:
        created = [
            services.execution_create(type="agent", target_id=PAIR_LIMITED, inputs={"seconds": 0.05})
            for _ in range(100)
        ]
    finally:
        registry.unregister("agent", PAIR_LIMITED)
    cluster = Cluster(workers=4, DJANGO_SETTINGS_MODULE="tests.faults.settings")
    samples: list[int] = []
    started = time.monotonic()
    try:
        def all_done() -> bool:
            running = Execution.objects.filter(status=ExecutionStatus.RUNNING).count()
            samples.append(running)
            return not Execution.objects.filter(status__in=ExecutionStatus.active()).exists()

        wait_for(all_done, timeout=120, interval=0.01, message=cluster.log)
    finally:
        cluster.stop()
    elapsed = time.monotonic() - started

    statuses = set(Execution.objects.filter(pk__in=[e.pk for e in created]).values_list("status", flat=True))
    assert statuses == {ExecutionStatus.COMPLETED}
    assert max(samples) == 2, f"running counts seen: {sorted(set(samples))}"
    assert Execution.objects.filter(attempts__gt=1).count() == 0
    span = Execution.objects.aggregate(first=Min("started_at"), last=Max("completed_at"))
    busy = (span["last"] - span["first"]).total_seconds()
    figure(
        f"concurrency limit: 100 executions (50 ms each) of a target limited to 2 on 4 workers, "
        f"{len(samples)} samples, at most {max(samples)} running, all completed {elapsed:.1f}s "
        f"after the cluster's start, {busy:.1f}s from the first start to the last end "
        f"(2.5s if each freed slot were taken at once)"
    )
