"""GET / (the landing page), and the one log line per request and per job."""

import json
import logging

import pytest
from django.test import Client

from project.log_format import JsonFormatter

pytestmark = pytest.mark.django_db


def test_the_landing_page_links_the_admin_the_docs_and_the_sdk(client: Client) -> None:
    response = client.get("/", HTTP_HOST="jobs.example.com")
    assert response.status_code == 200
    html = response.content.decode()
    for link in ('href="/admin/"', 'href="/api/docs/"', 'href="/readyz"'):
        assert link in html
    assert 'get_sync_client(url="http://jobs.example.com"' in html
    assert "cdn" not in html.lower()
    assert client.post("/").status_code == 405


def test_one_line_per_request_with_its_route(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="agentjobs"):
        client.get("/api/v1/executions/00000000-0000-0000-0000-000000000001")
    lines = [r for r in caplog.records if r.name == "agentjobs.http"]
    assert len(lines) == 1
    record = lines[0]
    assert record.getMessage().startswith("GET /api/v1/executions/00000000-0000-0000-0000-000000000001 401 ")
    assert record.route == "/api/v1/executions/{pk}"  # type: ignore[attr-defined]
    # Django's own "Unauthorized"/"Not Found" warning does not repeat it.
    assert not [r for r in caplog.records if r.name == "django.request"]


def test_log_format_json_writes_one_object_with_the_fields(client: Client, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="agentjobs"):
        client.get("/healthz")
    record = next(r for r in caplog.records if r.name == "agentjobs.http")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["logger"] == "agentjobs.http" and entry["level"] == "info"
    assert entry["event"] == "http_request" and entry["status"] == 200 and entry["route"] == "/healthz"
    assert entry["message"].startswith("GET /healthz 200")
