"""The admin index as the operations page: what staff see, its live panel, and its cost."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from executions.models import Execution, ExecutionStatus
from tests.conftest import Cluster, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(client: Client, make_user) -> Client:
    client.force_login(make_user("operator", staff=True))
    return client


def _executions(*, target: str, status: str, count: int, seconds: float, minutes_ago: float = 1) -> None:
    now = timezone.now()
    created = now - timedelta(minutes=minutes_ago)
    rows = Execution.objects.bulk_create(
        Execution(type="agent", target_id=target, status=status) for _ in range(count)
    )
    Execution.objects.filter(pk__in=[row.pk for row in rows]).update(
        created_at=created, started_at=created, completed_at=created + timedelta(seconds=seconds)
    )


def test_the_index_is_the_operations_page(staff_client: Client) -> None:
    _executions(target="echo", status=ExecutionStatus.COMPLETED, count=9, seconds=2)
    _executions(target="echo", status=ExecutionStatus.FAILED, count=1, seconds=4)
    _executions(target="summarize", status=ExecutionStatus.PENDING, count=3, seconds=0, minutes_ago=2)
    response = staff_client.get("/admin/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Operations" in html
    assert 'id="ops-pending-executions">3<' in html
    assert html.count("<svg") >= 2 and "13 created" in html  # the last hour's executions
    targets = html[html.index('id="ops-targets"'):]
    assert "<td>echo</td><td>10</td><td>1</td>" in targets and "10 %" in targets
    assert "2.000 s" in targets and "4.000 s" in targets  # p50, p95
    # No worker: said plainly, and the app list is still there.
    assert "No worker is alive and 3 jobs are pending" in html
    assert "/admin/executions/execution/" in html
    assert "cdn" not in html.lower()


def test_the_panel_alone_for_the_refresh(staff_client: Client, client: Client) -> None:
    response = staff_client.get("/admin/operations/panel/")
    assert response.status_code == 200
    assert "<section" in response.content.decode() and "<html" not in response.content.decode()


def test_staff_only(client: Client, make_user) -> None:
    assert client.get("/admin/").status_code == 302
    assert client.get("/admin/operations/panel/").status_code == 302
    client.force_login(make_user("someone"))
    assert client.get("/admin/operations/panel/").status_code == 302


def test_its_queries_do_not_grow_with_the_rows(staff_client: Client, django_assert_max_num_queries) -> None:
    _executions(target="echo", status=ExecutionStatus.COMPLETED, count=500, seconds=1)
    with django_assert_max_num_queries(14):
        assert staff_client.get("/admin/operations/panel/").status_code == 200


@pytest.mark.live
def test_workers_and_what_they_run(staff_client: Client, api) -> None:
    cluster = Cluster(workers=2)
    try:
        created = api.post(
            "/api/v1/executions", {"type": "agent", "target_id": "sleep", "inputs": {"seconds": 30}},
            format="json",
        ).json()["execution_id"]

        def shown() -> bool:
            html = staff_client.get("/admin/operations/panel/").content.decode()
            return created[:10] in html and "No worker" not in html

        wait_for(shown, timeout=30, message=cluster.log)
        html = staff_client.get("/admin/operations/panel/").content.decode()
        workers = html[html.index('id="ops-workers-table"'):]
        assert workers.count("<tr>") == 3  # the header and two workers
        assert "idle" in workers and "sleep" in workers
        api.post(f"/api/v1/executions/{created}/cancel")
    finally:
        cluster.stop()
