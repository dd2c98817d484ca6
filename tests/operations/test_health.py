"""/healthz and /readyz as a load balancer or Kubernetes sees them, with a real qcluster."""

import pytest
from django.test import Client

from tests.conftest import Cluster, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz_answers_without_looking_at_anything_else(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]
    assert client.post("/healthz").status_code == 405


def test_readyz_without_workers_is_503_with_the_reason(client: Client, cluster_name: str) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True
    assert body["checks"]["workers"]["ok"] is False
    assert body["reason"].startswith("workers: no worker cluster")


def test_readyz_leaves_workers_out_when_told(client: Client, settings) -> None:
    settings.HEALTH_REQUIRE_WORKERS = False
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert set(response.json()["checks"]) == {"database", "broker"}


@pytest.mark.live
def test_readyz_follows_the_workers_going_and_coming_back(client: Client, cluster_name: str) -> None:
    def ready() -> bool:
        return client.get("/readyz").status_code == 200

    cluster = Cluster(workers=2, Q_CLUSTER_NAME=cluster_name)
    try:
        wait_for(ready, timeout=30, message=lambda: f"{client.get('/readyz').json()}\n{cluster.log()}")
        body = client.get("/readyz").json()
        assert body["checks"]["workers"]["workers"] == 2
        assert body["checks"]["workers"]["clusters"] == 1
    finally:
        cluster.stop()
    # The sentinel's last status expires 3 s after it stops.
    wait_for(lambda: client.get("/readyz").status_code == 503, timeout=15)
    assert client.get("/readyz").json()["reason"].startswith("workers:")

    cluster = Cluster(workers=1, Q_CLUSTER_NAME=cluster_name)
    try:
        wait_for(ready, timeout=30, message=lambda: f"{client.get('/readyz').json()}\n{cluster.log()}")
        assert client.get("/readyz").json()["checks"]["workers"]["workers"] == 1
    finally:
        cluster.stop()
