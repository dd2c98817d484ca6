"""Cross-cutting behaviour: CORS, JSON errors on unknown routes, request guards."""

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

pytestmark = pytest.mark.django_db


def test_cors_is_off_by_default(client):
    response = client.get("/ok", HTTP_ORIGIN="https://studio.example")
    assert "access-control-allow-origin" not in response.headers


def test_cors_when_on_exposes_the_headers_langgraph_clients_read(api, settings):
    settings.CORS_ALLOW_ALL_ORIGINS = True

    preflight = api.options(
        "/threads/search",
        HTTP_ORIGIN="https://studio.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="x-api-key,content-type",
    )
    response = api.post("/threads/search", {}, format="json", HTTP_ORIGIN="https://studio.example")

    assert preflight.status_code == 200
    assert "x-api-key" in preflight.headers["access-control-allow-headers"]
    assert response.headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {
        "content-location", "location", "x-pagination-total", "x-pagination-next",
        "idempotent-replayed", "retry-after",
    } <= exposed


def test_unknown_routes_answer_json_404(client):
    response = client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_nul_characters_are_refused_with_a_clear_4xx(api):
    body = {"type": "agent", "target_id": "echo", "inputs": {"text": "a\u0000b"}}
    executions = api.post("/api/v1/executions", body, format="json")
    threads = api.post("/threads", {"metadata": {"a": "\u0000"}}, format="json")
    query = api.get("/api/v1/executions?target_id=%00")

    assert executions.status_code == 400 and "NUL" in executions.json()["detail"]
    assert threads.status_code == 422 and "NUL" in threads.json()["detail"]
    assert query.status_code == 400
    assert api.post("/api/v1/executions", {**body, "inputs": {"text": "a\\u0000b"}}, format="json").status_code == 201


def test_the_request_guards_answer_the_same_under_asgi(api):
    """The ASGI handler (uvicorn, and the SSE views) reads the body itself before the middleware
    runs; the guards must still refuse a large body and NUL text, before any async view."""
    headers = {"x-api-key": api.raw_key}
    big = '{"assistant_id": "echo", "input": {"text": "' + "x" * (1024 * 1024) + '"}}'

    async def requests() -> list:
        client = AsyncClient()
        return [
            await client.post("/runs/stream", big, content_type="application/json", headers=headers),
            await client.post(
                "/runs/stream", {"assistant_id": "echo", "input": {"text": "a\u0000b"}},
                content_type="application/json", headers=headers,
            ),
            await client.get("/api/v1/executions?target_id=%00", headers=headers),
        ]

    too_large, nul_body, nul_query = async_to_sync(requests)()

    assert too_large.status_code == 413
    assert too_large.json() == {"detail": "Request body is larger than the limit of 1024 KB."}
    assert nul_body.status_code == 422 and "NUL" in nul_body.json()["detail"]
    assert nul_query.status_code == 400 and "NUL" in nul_query.json()["detail"]
