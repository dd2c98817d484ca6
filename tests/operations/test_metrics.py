"""GET /metrics: Prometheus text parsed with prometheus_client's own parser, its JSON form, who
may read it, and counts made in the worker processes."""

import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import ROOT, Cluster, subprocess_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

FAMILIES = {
    "agentjobs_jobs_created", "agentjobs_jobs_finished", "agentjobs_job_duration_seconds",
    "agentjobs_webhook_deliveries", "agentjobs_http_requests",
    "agentjobs_http_request_duration_seconds", "agentjobs_queue_depth", "agentjobs_running_jobs",
    "agentjobs_oldest_pending_age_seconds", "agentjobs_workers_alive",
    "agentjobs_worker_clusters_alive",
}


def scrape(client: Client) -> list[Sample]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return [
        sample
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sample's value; 0 for a labelled series not seen yet (a counter never incremented)."""
    matching = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    return sum(matching)


def families(client: Client) -> Iterator[str]:
    for family in text_string_to_metric_families(client.get("/metrics").content.decode()):
        yield family.name


def test_every_family_is_exposed_and_parses(client: Client, api) -> None:
    api.get("/api/v1/executions")  # one HTTP request and one job, so the labelled ones exist
    api.post("/api/v1/executions", {"type": "agent", "target_id": "echo", "inputs": {}}, format="json")
    names = set(families(client))
    # In multiprocess mode a family shows once some process counted in it: no worker ran here,
    # and no webhook was sent.
    assert FAMILIES - names <= {
        "agentjobs_jobs_finished", "agentjobs_job_duration_seconds", "agentjobs_webhook_deliveries"
    }
    assert {"agentjobs_queue_depth", "agentjobs_jobs_created", "agentjobs_http_requests"} <= names


def test_a_created_job_counts_and_waits_in_the_queue(client: Client, api) -> None:
    before = scrape(client)
    for _ in range(3):
        created = api.post(
            "/api/v1/executions", {"type": "agent", "target_id": "echo", "inputs": {}}, format="json"
        )
        assert created.status_code == 201
    after = scrape(client)
    created_delta = (
        value(after, "agentjobs_jobs_created_total", kind="execution", target="echo")
        - value(before, "agentjobs_jobs_created_total", kind="execution", target="echo")
    )
    assert created_delta == 3
    assert value(after, "agentjobs_queue_depth", kind="execution") == 3
    assert value(after, "agentjobs_running_jobs", kind="execution") == 0
    assert value(after, "agentjobs_oldest_pending_age_seconds", kind="execution") >= 0
    assert value(after, "agentjobs_workers_alive") == 0


def test_requests_are_counted_by_route_not_by_path(client: Client, api) -> None:
    route = "/api/v1/executions/{pk}"
    before = value(scrape(client), "agentjobs_http_requests_total", status="404")
    for execution_id in ("00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"):
        assert api.get(f"/api/v1/executions/{execution_id}").status_code == 404
    samples = scrape(client)
    assert value(samples, "agentjobs_http_requests_total", status="404") - before == 2
    assert value(samples, "agentjobs_http_requests_total", route=route, method="GET", status="404") >= 2
    paths = {s.labels.get("route") for s in samples if s.name == "agentjobs_http_requests_total"}
    assert not any("00000000" in (path or "") for path in paths)


def test_json_format_as_on_the_agent_server(client: Client, api, cluster_name: str) -> None:
    api.post("/api/v1/executions", {"type": "agent", "target_id": "echo", "inputs": {}}, format="json")
    body = client.get("/metrics?format=json").json()
    assert body["queue"]["executions"]["n_pending"] == 1
    assert body["queue"]["runs"] == {"n_pending": 0, "n_running": 0, "oldest_pending_age_secs": 0.0}
    assert body["workers"] == {"alive": 0, "clusters": []}
    assert body["jobs"]["created"] >= 1
    assert body["http"]["requests"] >= 1


def test_an_unknown_format_is_a_422(client: Client) -> None:
    response = client.get("/metrics?format=xml")
    assert response.status_code == 422
    assert "prometheus, json" in response.json()["detail"]


def test_only_loopback_and_staff_without_a_token(client: Client, make_user) -> None:
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    remote = client.get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert remote.status_code == 403
    assert "METRICS_TOKEN" in remote.json()["detail"]
    # A proxy on this machine forwards everyone's requests from loopback.
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403
    client.force_login(make_user("operator", staff=True))
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200


def test_a_token_opens_it_from_elsewhere(client: Client, settings) -> None:
    settings.METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 401
    wrong = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    right = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert right.status_code == 200


@pytest.mark.live
def test_worker_processes_count_what_they_run(client: Client, api) -> None:
    before = scrape(client)
    cluster = Cluster(workers=2)
    try:
        ids = [
            api.post("/api/v1/executions", {"type": "agent", "target_id": target, "inputs": inputs},
                     format="json").json()["execution_id"]
            for target, inputs in (("echo", {"a": 1}), ("echo", {"b": 2}), ("fail", {}),
                                   ("wait", {"seconds": 0.1}))
        ]

        def ended() -> bool:
            return all(api.get(f"/api/v1/executions/{i}").json()["status"] in ("completed", "failed")
                       for i in ids)

        wait_for(ended, timeout=30, message=cluster.log)
        waited = api.post(
            "/runs/wait",
            {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}},
            format="json",
        )
        assert waited.status_code == 200, waited.content
        wait_for(lambda: value(scrape(client), "agentjobs_workers_alive") == 2, timeout=10)
        # The worker counts a run's end just after recording it, which /wait may answer first.
        wait_for(
            lambda: value(scrape(client), "agentjobs_jobs_finished_total", kind="run", target="echo")
            > value(before, "agentjobs_jobs_finished_total", kind="run", target="echo"),
            timeout=10,
        )
        after = scrape(client)
        # One line at each job's start and end, in the worker's log.
        log = cluster.log()
        assert f"execution {ids[0]} started: echo (attempt 1)" in log
        assert f"execution {ids[0]} completed: echo in " in log
        assert f"execution {ids[2]} failed: fail in " in log
    finally:
        cluster.stop()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("agentjobs_jobs_finished_total", kind="execution", target="echo", status="completed") == 2
    assert delta("agentjobs_jobs_finished_total", kind="execution", target="fail", status="failed") == 1
    assert delta("agentjobs_job_duration_seconds_count", kind="execution", target="echo") == 2
    # An async def target, run on the worker's event loop rather than its thread.
    assert delta("agentjobs_jobs_finished_total", kind="execution", target="wait", status="completed") == 1
    assert delta("agentjobs_jobs_created_total", kind="run", target="echo") == 1
    assert delta("agentjobs_jobs_finished_total", kind="run", target="echo", status="success") == 1
    assert value(after, "agentjobs_worker_clusters_alive") == 1
    assert value(after, "agentjobs_queue_depth", kind="execution") == 0


def test_counts_of_exited_processes_are_kept_once(client: Client, settings) -> None:
    """A process that counted and exited (a recycled worker) is folded into the archive at the
    next scrape: its counts stay, neither lost nor doubled, and its files go."""
    before = value(scrape(client), "agentjobs_jobs_created_total", kind="execution", target="folded")
    program = (
        "import os, django; django.setup()\n"
        "from project.telemetry import job_created\n"
        "for _ in range(5): job_created(kind='execution', target='folded')\n"
        "print(os.getpid())"
    )
    counted = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, check=True,
    )
    pid = counted.stdout.strip()
    directory = settings.PROMETHEUS_MULTIPROC_DIR
    assert (directory / f"counter_{pid}.db").exists()
    for _ in range(2):
        samples = scrape(client)
        assert value(samples, "agentjobs_jobs_created_total", kind="execution", target="folded") - before == 5
    assert not (directory / f"counter_{pid}.db").exists()
    assert (directory / "counter_archive.db").exists()
