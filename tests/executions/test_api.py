"""The Executions REST API as a client sees it."""

import uuid

import pytest
from django.utils import timezone

from executions import runtime
from executions.models import Execution, ExecutionStatus

pytestmark = pytest.mark.django_db

URL = "/api/v1/executions"


def create(client, **body):
    body.setdefault("type", "agent")
    body.setdefault("target_id", "echo")
    return client.post(URL, body, format="json")


# --- create -------------------------------------------------------------------------------------


def test_create_returns_id_and_pending_status_at_once(api):
    response = create(api, inputs={"hello": "world"}, config={"tone": "low"})

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"execution_id", "status", "status_url", "created_at"}
    assert body["status"] == "pending"
    assert body["status_url"].endswith(f"{URL}/{body['execution_id']}")
    assert response["Location"] == body["status_url"]
    row = Execution.objects.get(pk=body["execution_id"])
    assert row.inputs == {"hello": "world"} and row.config == {"tone": "low"}


def test_create_accepts_bearer_authorization(alice, make_client):
    client = make_client(alice, bearer=True)
    assert create(client).status_code == 201


def test_create_accepts_json_sent_without_json_content_type(api):
    response = api.generic(
        "POST", URL, '{"type": "agent", "target_id": "echo"}', content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"type": "agent", "target_id": "nope"}, "No agent named 'nope'"),
        ({"type": "pipeline", "target_id": "echo"}, "'echo' is an agent, not a pipeline"),
        (
            {"type": "agent", "target_id": "text_report", "inputs": {"text": "x"}},
            "is a pipeline, not an agent",
        ),
        ({"type": "robot", "target_id": "echo"}, "type"),
        (
            {"type": "agent", "target_id": "sleep", "inputs": {}},
            "inputs.seconds: This field is required.",
        ),
        (
            {"type": "agent", "target_id": "sleep", "inputs": {"seconds": "soon"}},
            "inputs.seconds: A valid number",
        ),
        ({"type": "agent", "target_id": "sleep", "inputs": {"seconds": -1}}, "inputs.seconds"),
        (
            {"type": "agent", "target_id": "sleep", "inputs": {"seconds": 1, "sconds": 2}},
            "inputs.sconds: Unknown input",
        ),
        ({"type": "agent", "target_id": "echo", "inputs": [1, 2]}, "inputs"),
        ({"type": "agent", "target_id": "echo", "config": "fast"}, "config"),
        ({"target_id": "echo"}, "type: This field is required."),
    ],
)
def test_create_rejects_bad_input_with_a_message_naming_the_problem(api, body, named):
    response = api.post(URL, body, format="json")

    assert response.status_code == 400
    assert named in response.json()["detail"]
    assert not Execution.objects.exists()


def test_create_rejects_malformed_json(api):
    response = api.generic("POST", URL, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_create_applies_input_defaults(api):
    response = create(api, target_id="summarize", inputs={"text": "One. Two."})
    assert Execution.objects.get(pk=response.json()["execution_id"]).inputs == {
        "text": "One. Two.",
        "max_sentences": 3,
    }


# --- auth and isolation ----------------------------------------------------------------------


def test_no_key_is_401_and_a_wrong_key_is_401(client):
    assert client.get(URL).status_code == 401
    response = client.get(URL, HTTP_X_API_KEY="ak_wrong")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid or revoked API key."


def test_revoked_key_is_rejected(api):
    from accounts.models import APIKey

    APIKey.objects.update(revoked_at=timezone.now())
    assert api.get(URL).status_code == 401


def test_api_keys_are_stored_hashed(api):
    from accounts.models import APIKey

    stored = APIKey.objects.get()
    assert api.raw_key not in (stored.key_hash, stored.prefix)
    assert len(stored.key_hash) == 64


def test_users_see_and_cancel_only_their_own_executions(api, bob_api):
    execution_id = create(api).json()["execution_id"]

    assert bob_api.get(f"{URL}/{execution_id}").status_code == 404
    assert bob_api.post(f"{URL}/{execution_id}/cancel").status_code == 404
    assert bob_api.get(URL).json()["count"] == 0
    assert Execution.objects.get(pk=execution_id).status == ExecutionStatus.PENDING


def test_unknown_and_malformed_ids_are_404(api):
    assert api.get(f"{URL}/{uuid.uuid4()}").status_code == 404
    assert api.get(f"{URL}/not-a-uuid").status_code == 404
    assert api.post(f"{URL}/not-a-uuid/cancel").status_code == 404


# --- detail --------------------------------------------------------------------------------------


def test_detail_of_a_completed_pipeline_has_progress_and_outputs(api):
    execution_id = create(
        api,
        type="pipeline",
        target_id="text_report",
        inputs={"text": "Cats purr. Cats sleep. Dogs bark."},
    ).json()["execution_id"]
    assert runtime.execute(execution_id) == "completed"

    body = api.get(f"{URL}/{execution_id}").json()

    assert body["status"] == "completed"
    assert body["progress"] == {
        "current_step": 5,
        "total_steps": 5,
        "step_name": "render report",
        "percentage": 100.0,
    }
    assert body["outputs"]["statistics"]["sentences"] == 3
    assert body["outputs"]["report"].startswith("# Text report")
    assert body["error"] is None
    assert body["started_at"] and body["completed_at"] and body["cancelled_at"] is None


def test_detail_of_a_failed_execution_has_a_clear_error(api):
    execution_id = create(api, target_id="fail", inputs={"message": "the model said no"}).json()[
        "execution_id"
    ]
    runtime.execute(execution_id)

    body = api.get(f"{URL}/{execution_id}").json()

    assert body["status"] == "failed"
    assert body["outputs"] is None
    assert body["error"]["message"] == "the model said no"
    assert body["error"]["type"] == "TargetFailed"


# --- cancel --------------------------------------------------------------------------------------


def test_cancel_pending_then_again_is_harmless(api):
    execution_id = create(api).json()["execution_id"]

    first = api.post(f"{URL}/{execution_id}/cancel")
    second = api.post(f"{URL}/{execution_id}/cancel")

    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == "cancelled"
    assert first.json()["cancelled_at"] == second.json()["cancelled_at"] is not None
    # A cancelled execution never starts, even if its queue message is delivered.
    assert runtime.execute(execution_id) == "skipped"


def test_cancel_finished_execution_is_409_with_a_message(api):
    execution_id = create(api).json()["execution_id"]
    runtime.execute(execution_id)

    response = api.post(f"{URL}/{execution_id}/cancel")

    assert response.status_code == 409
    assert (
        response.json()["detail"]
        == f"Execution {execution_id} is already completed and cannot be cancelled."
    )


# --- list ----------------------------------------------------------------------------------------


@pytest.fixture
def three_executions(api):
    # A worker takes the oldest pending execution: the one to fail is made (and run) first.
    failed = create(api, target_id="fail").json()["execution_id"]
    runtime.execute(failed)
    echo = create(api).json()["execution_id"]
    pipeline = create(api, type="pipeline", target_id="countdown", inputs={"steps": 2}).json()[
        "execution_id"
    ]
    return {"echo": echo, "failed": failed, "pipeline": pipeline}


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [e["execution_id"] for e in response.json()["executions"]]


def test_list_filters_each_may_repeat(api, three_executions):
    e = three_executions
    assert ids(api.get(URL, {"status": "failed"})) == [e["failed"]]
    assert set(ids(api.get(URL + "?status=failed&status=pending"))) == set(e.values())
    assert ids(api.get(URL, {"type": "pipeline"})) == [e["pipeline"]]
    assert set(ids(api.get(URL + "?target_id=echo&target_id=fail"))) == {e["echo"], e["failed"]}
    assert ids(api.get(URL, {"target_id": "retired-agent"})) == []


def test_list_rejects_unknown_filter_values(api, three_executions):
    response = api.get(URL, {"status": "exploded"})
    assert response.status_code == 400
    assert "status" in response.json()["detail"]
    assert api.get(URL, {"ordering": "owner"}).status_code == 400


def test_list_orders_newest_first_by_default_and_on_request(api, three_executions):
    e = three_executions
    assert ids(api.get(URL)) == [e["pipeline"], e["echo"], e["failed"]]
    assert ids(api.get(URL, {"ordering": "created_at"})) == [e["failed"], e["echo"], e["pipeline"]]
    # Executions that have not started sort last either way, on SQLite and PostgreSQL alike.
    assert ids(api.get(URL, {"ordering": "-started_at"}))[0] == e["failed"]
    assert ids(api.get(URL, {"ordering": "started_at"}))[0] == e["failed"]


def test_list_paginates_with_count_page_and_page_size(api):
    created = [create(api).json()["execution_id"] for _ in range(5)]

    body = api.get(URL, {"page": 2, "page_size": 2, "ordering": "created_at"}).json()

    assert body["count"] == 5 and body["page"] == 2 and body["page_size"] == 2
    assert [e["execution_id"] for e in body["executions"]] == created[2:4]
    beyond = api.get(URL, {"page": 9, "page_size": 2}).json()
    assert beyond["executions"] == [] and beyond["count"] == 5


@pytest.mark.parametrize(
    "params", [{"page_size": 0}, {"page_size": 101}, {"page": 0}, {"page": "x"}]
)
def test_list_rejects_out_of_range_pagination(api, params):
    response = api.get(URL, params)
    assert response.status_code == 400
    assert next(iter(params)) in response.json()["detail"]


def test_list_query_count_does_not_grow_with_rows(api, django_assert_max_num_queries):
    for _ in range(30):
        create(api)
    with django_assert_max_num_queries(4):
        assert len(api.get(URL, {"page_size": 100}).json()["executions"]) == 30


# --- targets and schema ----------------------------------------------------------------------


def test_targets_lists_agents_and_pipelines_with_steps_and_inputs(api):
    targets = {t["id"]: t for t in api.get("/api/v1/targets").json()["targets"]}

    assert {"echo", "sleep", "fail", "summarize", "text_report", "countdown"} <= set(targets)
    assert targets["text_report"]["type"] == "pipeline"
    assert targets["text_report"]["steps"] == [
        "normalize",
        "split sentences",
        "word statistics",
        "summarize",
        "render report",
    ]
    summarize_inputs = {f["name"]: f for f in targets["summarize"]["inputs"]}
    assert summarize_inputs["text"]["required"] is True
    assert summarize_inputs["max_sentences"] == {
        "name": "max_sentences",
        "type": "integer",
        "required": False,
        "default": 3,
        "description": "How many sentences the summary keeps.",
    }
    assert targets["echo"]["steps"] is None


def test_openapi_schema_and_docs_are_served(client, api):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {
        "/api/v1/executions",
        "/api/v1/executions/{id}",
        "/api/v1/executions/{id}/cancel",
    } <= set(paths)
    assert set(paths["/api/v1/executions/{id}/cancel"]["post"]["responses"]) == {
        "200",
        "400",
        "401",
        "404",
        "409",
        "413",
    }
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
    # The Agent Server's own path for it, as langgraph's GET /docs.
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs["Content-Type"].startswith("text/html")
    assert b"swagger" in docs.content.lower() and b"/api/schema/" in docs.content


# --- idempotency and config ------------------------------------------------------------------


def test_the_same_idempotency_key_returns_the_original_execution(api, bob_api):
    first = api.post(
        URL,
        {"type": "agent", "target_id": "echo", "inputs": {"n": 1}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-1",
    )
    again = api.post(
        URL,
        {"type": "agent", "target_id": "echo", "inputs": {"n": 1}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-1",
    )
    other_user = bob_api.post(
        URL, {"type": "agent", "target_id": "echo"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )

    assert first.status_code == again.status_code == 201
    assert first["Idempotent-Replayed"] == "false" and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert other_user.json()["execution_id"] != first.json()["execution_id"]
    assert Execution.objects.count() == 2


def test_an_idempotency_key_reused_for_another_target_is_409(api):
    api.post(URL, {"type": "agent", "target_id": "echo"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    response = api.post(
        URL, {"type": "agent", "target_id": "fail"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2"
    )
    assert response.status_code == 409
    assert "k-2" in response.json()["detail"]


def test_an_idempotency_key_reused_with_other_inputs_is_409_as_on_the_runs_api(api, alice):
    """The runs API's rule: the same key with another request would otherwise answer with an
    execution that does not do what the second request asked."""
    first = api.post(
        URL,
        {"type": "agent", "target_id": "echo", "inputs": {"text": "a"}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-3",
    )
    other_inputs = api.post(
        URL,
        {"type": "agent", "target_id": "echo", "inputs": {"text": "b"}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-3",
    )
    other_config = api.post(
        URL,
        {"type": "agent", "target_id": "echo", "inputs": {"text": "a"}, "config": {"m": 1}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-3",
    )

    assert first.status_code == 201
    assert other_inputs.status_code == other_config.status_code == 409
    detail = other_inputs.json()["detail"]
    assert "Idempotency-Key 'k-3' was already used for another request" in detail
    assert first.json()["execution_id"] in detail
    assert list(Execution.objects.filter(owner=alice).values_list("inputs", flat=True)) == [
        {"text": "a"}
    ]


def test_the_same_request_written_otherwise_is_the_same_request(api):
    """Key order, spacing and a trailing slash do not make another request."""
    first = api.generic(
        "POST",
        URL,
        '{"type": "agent", "target_id": "echo", "inputs": {"text": "a", "n": 1}}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k-4",
    )
    again = api.generic(
        "POST",
        URL + "/",
        '{"inputs":{"n":1,"text":"a"},"target_id":"echo","type":"agent"}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k-4",
    )
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true" and again.json() == first.json()


def test_an_idempotency_key_over_255_characters_is_400_and_creates_nothing(api):
    response = api.post(
        URL, {"type": "agent", "target_id": "echo"}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 256
    )
    assert response.status_code == 400
    assert response.json() == {
        "detail": "Idempotency-Key: Idempotency-Key is too long: 256 characters, the limit is 255.",
        "errors": {
            "Idempotency-Key": ["Idempotency-Key is too long: 256 characters, the limit is 255."]
        },
    }
    assert not Execution.objects.exists()
    assert (
        api.post(
            URL,
            {"type": "agent", "target_id": "echo"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="k" * 255,
        ).status_code
        == 201
    )


def test_a_key_stored_before_requests_were_hashed_is_replayed_on_its_key_alone(api, alice):
    first = api.post(
        URL,
        {"type": "agent", "target_id": "echo", "inputs": {"text": "a"}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="old",
    )
    Execution.objects.filter(pk=first.json()["execution_id"]).update(request_hash="")
    again = api.post(
        URL,
        {"type": "agent", "target_id": "echo", "inputs": {"text": "b"}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="old",
    )
    assert again.status_code == 201 and again.json()["execution_id"] == first.json()["execution_id"]


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"max_attempts": 0}, "config.max_attempts"),
        ({"max_attempts": "many"}, "config.max_attempts"),
        ({"timeout": 0}, "config.timeout"),
        ({"timeout": 10**9}, "config.timeout: Ensure this value is less than or equal to 3600"),
    ],
)
def test_platform_config_keys_are_validated(api, config, named):
    response = create(api, config=config)
    assert response.status_code == 400
    assert named in response.json()["detail"]


def test_other_config_keys_are_passed_through(api):
    response = create(api, config={"model": "small", "max_attempts": 2})
    assert Execution.objects.get(pk=response.json()["execution_id"]).config == {
        "model": "small",
        "max_attempts": 2,
    }


# --- limits ---------------------------------------------------------------------------------------


def test_a_body_over_one_megabyte_is_413_json(api):
    big = (
        '{"type": "agent", "target_id": "echo", "inputs": {"text": "' + "x" * (1024 * 1024) + '"}}'
    )
    response = api.generic("POST", URL, big, content_type="application/json")
    assert response.status_code == 413
    assert "larger than the limit of 1024 KB" in response.json()["detail"]
    assert not Execution.objects.exists()


def test_active_executions_per_user_are_capped_with_429(api, bob_api, settings):
    settings.EXECUTIONS_MAX_ACTIVE_PER_USER = 2
    assert create(api).status_code == create(api).status_code == 201

    refused = create(api)

    assert refused.status_code == 429
    assert "2 pending or running executions" in refused.json()["detail"]
    assert create(bob_api).status_code == 201  # a per-user cap


def test_creates_are_throttled_per_user(api, bob_api, monkeypatch):
    from django.core.cache import cache
    from rest_framework.throttling import ScopedRateThrottle

    cache.clear()
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"create": "3/min"})
    try:
        statuses = [create(api).status_code for _ in range(4)]
        assert statuses == [201, 201, 201, 429]
        assert api.get(URL).status_code == 200  # reads are not throttled
        assert create(bob_api).status_code == 201  # per user
    finally:
        cache.clear()


def test_an_empty_ordering_is_no_ordering(api, three_executions):
    assert len(ids(api.get(URL, {"ordering": ","}))) == 3
