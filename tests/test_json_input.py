"""Text the platform cannot store or write back (lone surrogates, NUL) and JSON nested too deep are
refused at the door of both APIs with a 4xx naming the field; rows stored before that stay
readable (issue 11, "clean input")."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.db import connection
from django.urls import reverse

from executions import services as execution_services
from executions.models import Execution
from project.api.json_input import body_problem
from runs import services as run_services
from runs.models import Assistant, Run, Thread
from runs.services.crons import cron_create
from schedules.services import schedule_create

pytestmark = pytest.mark.django_db

LIMIT = 100  # settings.MAX_JSON_DEPTH's default, the documented limit
RUN = {"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}}
SURROGATE = '"a\\ud800b"'  # JSON text: the escape of a lone high surrogate


def nested(depth: int, leaf: str = "1", key: str = "a") -> str:
    """JSON text of ``depth`` objects inside each other (``depth`` levels: 1 is ``{"a": 1}``)."""
    return f'{{"{key}": ' * depth + leaf + "}" * depth


def fill(template: str, value: str) -> str:
    """``template`` with its ``@`` replaced by the JSON text ``value``."""
    return template.replace("@", value)


def post(client: Any, path: str, raw: str | bytes, method: str = "POST") -> Any:
    return client.generic(method, path, raw, content_type="application/json")


def problem(raw: str | bytes) -> tuple[str, str] | None:
    found = body_problem(raw.encode() if isinstance(raw, str) else raw)
    return None if found is None else (found.reason.split(" (")[0], found.where)


# --- the check itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b'{"emoji": "\\ud83d\\ude00", "raw": "\xf0\x9f\x98\x80", "text": "caf\xc3\xa9"}',
        b'{"text": "a backslash then u0000: \\\\u0000, and \\\\ud800"}',
        b'{"brackets in text": "' + b"[{" * 500 + b'"}',
        b'{"escaped quote": "\\"[[[[", "n": 1}',
        # Many containers, all shallow: a big batch or a long conversation.
        json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}] * 2000}).encode(),
        nested(LIMIT).encode(),
        ("[" * LIMIT + "]" * LIMIT).encode(),
    ],
    ids=["empty", "not-json", "valid-non-ascii", "escaped-backslash", "brackets-in-strings",
         "escaped-quote", "many-shallow", "object-at-limit", "array-at-limit"],
)
def test_ordinary_bodies_pass(raw: bytes) -> None:
    assert body_problem(raw) is None


LONE = "Text may not contain a lone UTF-16 surrogate"
NUL = "Text may not contain the NUL character"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (fill('{"inputs": {"text": @}}', SURROGATE), (LONE, "inputs.text")),
        ('{"inputs": {"text": "\\uDFFF"}}', (LONE, "inputs.text")),
        ('{"pair reversed": "\\ude00\\ud83d"}', (LONE, '["pair reversed"]')),
        ('{"ok": "\\ud83d\\ude00", "high then A": "\\ud83d\\u0041"}', (LONE, '["high then A"]')),
        (fill('{"a": [1, {"b": ["ok", @]}]}', SURROGATE), (LONE, "a[1].b[1]")),
        (fill('{"metadata": {@: 1}}', SURROGATE), (LONE, 'the key metadata["a\\ud800b"]')),
        (b'{"inputs": {"text": "a\xed\xa0\x80b"}}', (LONE, "inputs.text")),
        ('{"config": {"x": "a\\u0000b"}}', (NUL, "config.x")),
        ('{"config": {"a\\u0000": "x"}}', (NUL, 'the key config["a\\u0000"]')),
        ('[{"input": {"odd key": "\\u0000"}}]', (NUL, '[0].input["odd key"]')),
        (b'{"a": "\x00"}', (NUL, "the request body")),
        ('"\\ud800"', (LONE, "the request body")),
    ],
)
def test_unstorable_text_is_found_with_its_path(raw: str | bytes, expected: tuple[str, str]) -> None:
    assert problem(raw) == expected


def test_nesting_one_level_past_the_limit_is_refused_with_its_path() -> None:
    deep = problem(fill('{"inputs": @}', nested(LIMIT)))  # LIMIT + 1 levels with the body's own
    assert deep is not None
    reason, where = deep
    assert reason == f"JSON may not be nested more than {LIMIT} levels deep"
    assert where.startswith("inputs.a.a.a.") and where.endswith("...") and len(where) <= 120

    # Nesting that alternates lists and objects, never two openers in a row.
    mixed = "".join('{"k": [0, ' for _ in range(LIMIT // 2 + 1)) + "1" + "]}" * (LIMIT // 2 + 1)
    assert problem(mixed) is not None and problem(mixed)[1].startswith("k[1].k[1]")
    assert problem(fill('{"a": [@], "b": 2}', nested(LIMIT - 2))) is None  # exactly LIMIT levels


def test_a_thousand_levels_are_refused_quickly() -> None:
    """The nesting that made the parser raise RecursionError, and the worst case of the check:
    a whole 1 MB body of brackets."""
    started = time.monotonic()
    assert problem(nested(1000)) is not None
    assert problem("[" * (1024 * 1024)) is not None
    assert problem("[" + "[]," * (256 * 1024) + "[]]") is None  # shallow, but half a million pairs
    # Malformed: never closed, and deep only once the pairs are gone. The parser would recurse
    # into it before finding the error, so it is refused as deep too.
    assert problem("[[]," * (256 * 1024)) is not None
    assert time.monotonic() - started < 5


# --- at the door of both APIs ----------------------------------------------------------------------


def _schema_body_operations(client: Any) -> list[tuple[str, str]]:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    return [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("post", "put", "patch")
    ]


@pytest.fixture
def objects(alice: Any) -> dict[str, str]:
    """Real ids for every path parameter, so each operation would otherwise reach its view."""
    thread = run_services.thread_create(owner=alice)
    run = run_services.run_create(owner=alice, body=RUN, thread_id=thread.pk)
    assistant = run_services.assistant_create(owner=alice, graph_id="echo")
    execution = execution_services.execution_create(owner=alice, type="agent", target_id="echo")
    schedule = schedule_create(owner=alice, type="agent", target_id="echo", cron="0 0 1 1 *")
    cron = cron_create(owner=alice, body={"assistant_id": "echo", "schedule": "0 0 1 1 *"}, thread_id=thread.pk)
    return {
        "thread_id": str(thread.pk), "run_id": str(run.pk), "assistant_id": str(assistant.pk),
        "id": str(execution.pk), "schedule_id": str(schedule.pk), "cron_id": str(cron.pk),
    }


def _counts() -> tuple[int, ...]:
    return tuple(model.objects.count() for model in (Execution, Thread, Run, Assistant))


@pytest.mark.parametrize(
    ("fault", "body", "named"),
    [
        ("surrogate", fill('{"metadata": {"note": @}}', SURROGATE), "metadata.note"),
        ("surrogate in a key", fill('{"metadata": {@: 1}}', SURROGATE), 'metadata["a\\ud800b"]'),
        ("NUL", '{"metadata": {"note": "a\\u0000b"}}', "metadata.note"),
        ("deep", fill('{"metadata": @}', nested(LIMIT)), "metadata.a.a"),
    ],
)
def test_every_create_and_update_operation_refuses_it_naming_the_field(
    api: Any, objects: dict[str, str], fault: str, body: str, named: str
) -> None:
    """Every POST, PUT and PATCH of the OpenAPI document (the URL confs' body operations)."""
    operations = _schema_body_operations(api)
    assert len(operations) >= 25 and ("POST", "/runs/batch") in operations
    before = _counts()
    for method, path in operations:
        response = post(api, path.format(**objects), body, method=method)
        executions_api = path.startswith("/api/")
        assert response.status_code == (400 if executions_api else 422), (method, path, response.content)
        detail = response.json()["detail"]
        assert named in detail, (method, path, detail)
        if executions_api:
            assert [field for field in response.json()["errors"] if field.startswith(named)], response.json()
    assert _counts() == before


EXECUTION = '{"type": "agent", "target_id": "echo", @}'
MESSAGE = '{"messages": [{"role": "user", "content": @}]}'
RUN_WITH = '{"assistant_id": "echo", @}'


@pytest.mark.parametrize(
    ("method", "path", "body", "named"),
    [
        ("POST", "/api/v1/executions", fill(EXECUTION, fill('"inputs": {"text": @}', SURROGATE)), "inputs.text"),
        ("POST", "/api/v1/executions", fill(EXECUTION, fill('"inputs": {@: "x"}', SURROGATE)), 'inputs["a\\ud800b"]'),
        ("POST", "/api/v1/executions", fill(EXECUTION, '"config": {"model": "a\\u0000"}'), "config.model"),
        ("POST", "/api/v1/executions", fill(EXECUTION, fill('"inputs": {"text": @}', nested(LIMIT))), "inputs.text.a"),
        ("POST", "/threads", fill('{"metadata": {"m": @}}', SURROGATE), "metadata.m"),
        ("PATCH", "/threads/{thread_id}", '{"metadata": {"m": "\\u0000"}}', "metadata.m"),
        ("POST", "/threads/{thread_id}/state", fill('{"values": @}', fill(MESSAGE, SURROGATE)),
         "values.messages[0].content"),
        ("POST", "/assistants", fill('{"graph_id": "echo", "config": {"configurable": {"x": @}}}', SURROGATE),
         "config.configurable.x"),
        ("PATCH", "/assistants/{assistant_id}", '{"name": "a\\u0000"}', "name"),
        ("POST", "/threads/{thread_id}/runs", fill(RUN_WITH, '"input": ' + fill(MESSAGE, SURROGATE)),
         "input.messages[0].content"),
        ("POST", "/threads/{thread_id}/runs/wait", fill(RUN_WITH, fill('"command": {"resume": @}', SURROGATE)),
         "command.resume"),
        ("POST", "/threads/{thread_id}/runs/stream", fill(RUN_WITH, '"input": ' + nested(LIMIT)), "input.a"),
        ("POST", "/runs", fill(RUN_WITH, '"input": {}, "metadata": {"k": "\\u0000"}'), "metadata.k"),
        ("POST", "/runs/wait", fill(RUN_WITH, fill('"input": {"t": @}', SURROGATE)), "input.t"),
        ("POST", "/runs/stream", fill(RUN_WITH, fill('"input": {"t": @}', SURROGATE)), "input.t"),
        ("POST", "/runs/batch", "[" + fill(RUN_WITH, '"input": {}') + ", " + fill(RUN_WITH, fill(
            '"input": {"t": @}', SURROGATE)) + "]", "[1].input.t"),
    ],
)
def test_each_create_names_the_field_of_its_own_body(
    api: Any, objects: dict[str, str], method: str, path: str, body: str, named: str
) -> None:
    before = _counts()
    response = post(api, path.format(**objects), body, method=method)
    assert response.status_code == (400 if path.startswith("/api/") else 422)
    assert response["Content-Type"] == "application/json"
    assert named in response.json()["detail"]
    assert _counts() == before


def test_raw_surrogate_bytes_are_refused_too(api: Any) -> None:
    """Python's json decodes a body's bytes with "surrogatepass": ED A0 80 is a lone surrogate."""
    response = post(api, "/threads", b'{"metadata": {"m": "\xed\xa0\x80"}}')
    assert response.status_code == 422 and "metadata.m" in response.json()["detail"]


def test_nesting_at_the_limit_is_stored_and_read_back(api: Any, alice: Any) -> None:
    """The limit counts the body's own level: an execution's inputs may hold LIMIT - 2 more."""
    inputs = fill('{"text": "x", "extra": @}', nested(LIMIT - 2))
    created = post(api, "/api/v1/executions", fill('{"type": "agent", "target_id": "echo", "inputs": @}', inputs))
    assert created.status_code == 201, created.content
    shown = api.get(f"/api/v1/executions/{created.json()['execution_id']}")
    assert shown.status_code == 200 and shown.json()["inputs"]["extra"] == json.loads(nested(LIMIT - 2))

    thread = post(api, "/threads", fill('{"metadata": @}', nested(LIMIT - 1)))
    assert thread.status_code == 200, thread.content
    assert api.get(f"/threads/{thread.json()['thread_id']}").json()["metadata"] == json.loads(nested(LIMIT - 1))


def test_the_limit_is_a_setting(api: Any, settings: Any) -> None:
    settings.MAX_JSON_DEPTH = 5
    assert post(api, "/threads", fill('{"metadata": @}', nested(4))).status_code == 200
    refused = post(api, "/threads", fill('{"metadata": @}', nested(5)))
    assert refused.status_code == 422 and "more than 5 levels" in refused.json()["detail"]


def test_a_nul_in_a_query_parameter_is_named(api: Any) -> None:
    executions = api.get("/api/v1/executions?status=running&target_id=a%00b")
    runs = api.get("/threads/00000000-0000-0000-0000-000000000000/runs?status=%00")
    assert executions.status_code == 400 and 'the query parameter "target_id"' in executions.json()["detail"]
    assert runs.status_code == 422 and 'the query parameter "status"' in runs.json()["detail"]


# --- rows stored before the door ------------------------------------------------------------------

HIGH = "\ud800"

stored_before = pytest.mark.skipif(
    "connection.vendor != 'sqlite'",
    reason="Only SQLite could store a lone surrogate; PostgreSQL refused the write.",
)


def _decoded(response: Any) -> Any:
    """The body as a client reads it: valid UTF-8 JSON, the surrogate as an escape."""
    return json.loads(response.content.decode("utf-8"))


@stored_before
def test_an_execution_stored_with_a_lone_surrogate_stays_readable(api: Any, alice: Any, admin_client: Any) -> None:
    assert connection.vendor == "sqlite"
    execution = Execution.objects.create(
        owner=alice, type="agent", target_id="echo", inputs={"text": f"a{HIGH}", HIGH: 1},
        outputs={"echo": HIGH}, event_seq=1,
    )
    execution.events.create(seq=1, type="created", data={"note": HIGH})
    fine = execution_services.execution_create(owner=alice, type="agent", target_id="echo", inputs={"text": "fine"})

    detail = api.get(f"/api/v1/executions/{execution.pk}")
    listed = api.get("/api/v1/executions")

    assert detail.status_code == listed.status_code == 200
    assert _decoded(detail)["inputs"] == {"text": f"a{HIGH}", HIGH: 1}  # as stored, escaped on the wire
    assert _decoded(detail)["outputs"] == {"echo": HIGH}
    assert {e["execution_id"] for e in _decoded(listed)["executions"]} == {str(execution.pk), str(fine.pk)}

    changelist = admin_client.get(reverse("admin:executions_execution_changelist"))
    change = admin_client.get(reverse("admin:executions_execution_change", args=[execution.pk]))
    assert changelist.status_code == change.status_code == 200
    page = change.content.decode("utf-8")
    assert "a\\ud800" in page and str(execution.pk) in changelist.content.decode("utf-8")


@stored_before
@pytest.mark.django_db(transaction=True)  # the stream reads from its own thread's connection
def test_an_execution_event_with_a_lone_surrogate_streams(api: Any, alice: Any) -> None:
    from tests.executions.test_streams import read_stream

    execution = Execution.objects.create(
        owner=alice, type="agent", target_id="echo", status="failed", event_seq=2,
    )
    execution.events.create(seq=1, type="created", data={"status": "pending"})
    execution.events.create(seq=2, type="status", data={"status": "failed", "note": HIGH})

    status, _, frames = read_stream(f"/api/v1/executions/{execution.pk}/events", key=api.raw_key)

    assert status == 200
    assert [f["event"] for f in frames] == ["created", "status"]
    assert json.loads(frames[1]["data"])["note"] == HIGH


@stored_before
def test_runs_api_rows_with_a_lone_surrogate_stay_readable(api: Any, alice: Any, admin_client: Any) -> None:
    thread = run_services.thread_create(owner=alice)
    run = run_services.run_create(owner=alice, body=RUN, thread_id=thread.pk)
    assistant = run_services.assistant_create(owner=alice, graph_id="echo")
    Thread.objects.filter(pk=thread.pk).update(metadata={"m": HIGH})
    Run.objects.filter(pk=run.pk).update(kwargs={**run.kwargs, "input": {"t": HIGH}}, metadata={HIGH: "k"})
    Assistant.objects.filter(pk=assistant.pk).update(metadata={"m": HIGH}, config={"c": HIGH})

    reads = {
        "thread": api.get(f"/threads/{thread.pk}"),
        "threads": post(api, "/threads/search", "{}"),
        "run": api.get(f"/threads/{thread.pk}/runs/{run.pk}"),
        "runs": api.get(f"/threads/{thread.pk}/runs"),
        "assistant": api.get(f"/assistants/{assistant.pk}"),
        "assistants": post(api, "/assistants/search", "{}"),
    }
    assert {name: r.status_code for name, r in reads.items()} == dict.fromkeys(reads, 200)
    assert _decoded(reads["thread"])["metadata"] == {"m": HIGH}
    assert _decoded(reads["run"])["metadata"] == {HIGH: "k"}
    assert _decoded(reads["assistant"])["config"] == {"c": HIGH}

    pages = [
        reverse(f"admin:runs_{name}_changelist") for name in ("thread", "run", "assistant")
    ] + [
        reverse("admin:runs_thread_change", args=[thread.pk]),
        reverse("admin:runs_run_change", args=[run.pk]),
        reverse("admin:runs_assistant_change", args=[assistant.pk]),
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        response.content.decode("utf-8")
    assistant_page = admin_client.get(reverse("admin:runs_assistant_change", args=[assistant.pk])).content.decode()
    assert "{&quot;c&quot;: &quot;\\ud800&quot;}" in assistant_page


@stored_before
@pytest.mark.django_db(transaction=True)  # /join reads from its own thread's connection
def test_a_finished_run_joins_with_thread_values_holding_a_lone_surrogate(api: Any, alice: Any) -> None:
    """The run ended without a result of its own: /join answers with its thread's values."""
    thread = run_services.thread_create(owner=alice)
    run = run_services.run_create(owner=alice, body=RUN, thread_id=thread.pk)
    Run.objects.filter(pk=run.pk).update(status="success", result=None)
    Thread.objects.filter(pk=thread.pk).update(values={"messages": [{"content": HIGH}]})

    from tests.runs.test_wait import join

    status, body = join(api, thread.pk, run.pk)

    assert status == 200
    assert body == {"messages": [{"content": HIGH}]}
