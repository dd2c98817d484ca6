"""When the system assistants (one per registered graph) are made: at start-up and by writes,
never by a read."""

from __future__ import annotations

import json

import httpx
import pytest

from accounts.models import api_key_create
from runs.apps import system_assistants_at_start
from runs.graphs import graph_ids, system_assistant_id, system_assistants_ensure
from runs.models import Assistant
from tests.conftest import Cluster, wait_for
from tests.runs.conftest import Server

RUN = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}}


def test_reads_do_not_make_a_missing_system_assistant(api) -> None:
    system_assistants_at_start()  # this process has started: later requests do not make them
    echo = system_assistant_id("echo")
    Assistant.objects.filter(pk=echo).delete()

    assert api.get(f"/assistants/{echo}").json() == {"detail": "Not Found"}
    found = api.post("/assistants/search", {"limit": 100}, format="json").json()
    assert str(echo) not in [assistant["assistant_id"] for assistant in found]
    assert api.post("/assistants/count", {}, format="json").json() == len(graph_ids()) - 1
    assert not Assistant.objects.filter(pk=echo).exists()

    # A run create is a write: it makes the assistant it needs.
    assert api.post("/runs", RUN, format="json").status_code == 200
    assert api.get(f"/assistants/{echo}").json()["name"] == "echo"


def test_making_them_costs_one_read_when_none_is_missing(db, django_assert_num_queries) -> None:
    system_assistants_ensure()
    with django_assert_num_queries(1):
        system_assistants_ensure()


@pytest.mark.live
def test_graphs_added_since_migrate_get_theirs_when_an_api_or_worker_process_starts(
    transactional_db, tmp_path, make_user
) -> None:
    # Each process reads its own config, so each one's start is seen on its own.
    for name in ("api", "worker"):
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"graphs": {f"added_for_{name}": "runs.demo_graphs:echo"}})
        )
    for_api, for_worker = system_assistant_id("added_for_api"), system_assistant_id("added_for_worker")
    assert not Assistant.objects.filter(pk__in=[for_api, for_worker]).exists()
    key = api_key_create(user=make_user("starter"))[1]

    cluster = Cluster(workers=1, LANGGRAPH_CONFIG=str(tmp_path / "worker.json"))
    server = None
    try:
        wait_for(
            lambda: Assistant.objects.filter(pk=for_worker).exists(), timeout=60,
            message="the worker to make its graph's system assistant",
        )
        server = Server(LANGGRAPH_CONFIG=str(tmp_path / "api.json"))  # its start probes /ok
        assert Assistant.objects.filter(pk=for_api).exists()
        found = httpx.post(
            f"{server.url}/assistants/search", json={"graph_id": "added_for_api"},
            headers={"X-Api-Key": key}, timeout=10,
        ).json()
        assert [(a["assistant_id"], a["metadata"]) for a in found] == [
            (str(for_api), {"created_by": "system"})
        ]
    finally:
        if server is not None:
            server.stop()
        cluster.stop()
