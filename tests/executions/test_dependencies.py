"""Dependencies (``depends_on``) and batches, through the API and the worker's claim, in-process."""

from collections.abc import Iterator

import pytest

from executions import runtime
from executions.models import Execution
from executions.registry import agent, registry

pytestmark = pytest.mark.django_db

URL = "/api/v1/executions"
BATCH = f"{URL}/batch"


@pytest.fixture(autouse=True)
def collect() -> Iterator[None]:
    @agent("collect_dependencies")
    def collect_dependencies(inputs, ctx):
        return {"name": inputs.get("name"), "saw": ctx.dependencies}

    try:
        yield
    finally:
        registry.unregister("agent", "collect_dependencies")


def item(name: str, *depends_on: str, **extra) -> dict:
    return {
        "type": "agent", "target_id": "collect_dependencies", "inputs": {"name": name},
        **({"depends_on": list(depends_on)} if depends_on else {}), **extra,
    }


def create(api, name: str, *depends_on: str, **extra) -> str:
    response = api.post(URL, item(name, *depends_on, **extra), format="json")
    assert response.status_code == 201, response.json()
    return response.json()["execution_id"]


def drain(limit: int = 200) -> list[str]:
    """Deliver messages until one finds nothing to run; the ids that ran, in the order they ran
    (a message is a wake-up: whatever it names, the claim takes what may run next)."""
    before = set(Execution.objects.filter(started_at__isnull=False).values_list("id", flat=True))
    for _ in range(limit):
        if runtime.execute("00000000-0000-0000-0000-000000000000") == "skipped":
            break
    return [
        str(pk) for pk in Execution.objects.filter(started_at__isnull=False)
        .order_by("started_at").values_list("id", flat=True) if pk not in before
    ]


def get(api, execution_id: str) -> dict:
    response = api.get(f"{URL}/{execution_id}")
    assert response.status_code == 200
    return response.json()


def test_a_dependent_waits_blocked_then_runs_with_its_dependencies_outputs(api):
    first = create(api, "first")
    second = create(api, "second", first, priority=10)

    body = get(api, second)
    assert (body["status"], body["depends_on"], body["blocked_by"]) == ("pending", [first], [first])
    # Blocked, it is not claimed though it outranks the other.
    assert runtime.execute(second) == "completed"
    assert get(api, first)["status"] == "completed"
    assert get(api, second)["blocked_by"] == []

    assert runtime.execute(second) == "completed"
    body = get(api, second)
    assert body["status"] == "completed"
    assert body["outputs"]["saw"] == {first: {"name": "first", "saw": {}}}


def test_a_diamond_runs_its_top_first_and_its_bottom_last_with_both_branches(api):
    top = create(api, "top")
    left = create(api, "left", top)
    right = create(api, "right", top)
    bottom = create(api, "bottom", left, right)

    order = drain()

    assert order[0] == top and order[-1] == bottom and set(order[1:3]) == {left, right}
    saw = get(api, bottom)["outputs"]["saw"]
    assert set(saw) == {left, right} and saw[left]["name"] == "left"


def test_a_chain_of_20_made_in_one_batch_runs_in_order(api):
    items = [item("0"), *(item(str(n), f"${n - 1}") for n in range(1, 20))]

    response = api.post(BATCH, {"executions": items}, format="json")

    assert response.status_code == 201, response.json()
    ids = [row["execution_id"] for row in response.json()["executions"]]
    assert len(ids) == 20 and all(row["status"] == "pending" for row in response.json()["executions"])
    assert get(api, ids[5])["blocked_by"] == [ids[4]]
    assert drain() == ids
    assert get(api, ids[19])["outputs"]["saw"] == {ids[18]: {"name": "18", "saw": {ids[17]: {
        "name": "17", "saw": get(api, ids[17])["outputs"]["saw"]}}}}


def test_a_failure_fails_every_dependent_downstream_at_once_naming_it(api):
    failing = api.post(URL, {"type": "agent", "target_id": "fail"}, format="json").json()["execution_id"]
    child = create(api, "child", failing)
    grandchild = create(api, "grandchild", child)
    bystander = create(api, "bystander")

    assert runtime.execute(failing) == "failed"

    for execution_id, dependency in ((child, failing), (grandchild, child)):
        body = get(api, execution_id)
        assert body["status"] == "failed" and body["attempts"] == 0 and body["started_at"] is None
        assert body["error"]["type"] == "DependencyFailed"
        assert body["error"]["details"]["dependency"] == dependency
        assert body["error"]["details"]["root"] == failing
        assert dependency in body["error"]["message"]
    assert get(api, bystander)["status"] == "pending"


def test_cancelling_a_parent_cancels_its_pending_dependents(api):
    parent = create(api, "parent")
    child = create(api, "child", parent)
    grandchild = create(api, "grandchild", child)

    assert api.post(f"{URL}/{parent}/cancel").status_code == 200

    for execution_id in (child, grandchild):
        body = get(api, execution_id)
        assert body["status"] == "cancelled" and body["cancelled_at"] is not None
        assert body["error"]["type"] == "DependencyFailed"
    assert drain() == []


def test_depending_on_an_execution_that_already_failed_fails_at_once(api):
    failing = api.post(URL, {"type": "agent", "target_id": "fail"}, format="json").json()["execution_id"]
    runtime.execute(failing)

    body = get(api, create(api, "late", failing))

    assert body["status"] == "failed" and body["error"]["type"] == "DependencyFailed"


@pytest.mark.parametrize(
    ("depends_on", "named"),
    [
        (["not-an-id"], "depends_on: 'not-an-id' is not an execution id."),
        (["00000000-0000-0000-0000-000000000001"], "depends_on: No execution"),
        ([f"00000000-0000-0000-0000-{n:012d}" for n in range(51)], "depends_on"),
        (["$0"], "depends_on"),
        ("abc", "depends_on"),
    ],
)
def test_bad_dependencies_are_a_400_naming_them(api, depends_on, named):
    response = api.post(URL, {**item("x"), "depends_on": depends_on}, format="json")

    assert response.status_code == 400, response.json()
    assert named in response.json()["detail"]
    assert not Execution.objects.exists()


def test_another_users_execution_cannot_be_depended_on(api, bob_api):
    bobs = create(bob_api, "bob's")

    response = api.post(URL, item("mine", bobs), format="json")

    assert response.status_code == 400 and f"No execution {bobs} of yours" in response.json()["detail"]


# --- batches -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "named"),
    [
        ([item("a"), item("b"), {"type": "agent", "target_id": "nope"}], "executions[2].target_id"),
        ([item("a"), {**item("b"), "inputs": [1]}], "executions[1].inputs"),
        ([item("a"), item("b", "$1")], "executions[1].depends_on: '$1' must name an earlier item"),
        ([item("a"), item("b", "$x")], "executions[1].depends_on"),
        ([item("a"), item("b", priority=20)], "executions[1].priority"),
        ([item("a"), item("b", "00000000-0000-0000-0000-000000000001")], "executions[1].depends_on"),
        ([], "executions"),
        ([item(str(n)) for n in range(101)], "executions"),
    ],
)
def test_a_batch_with_one_bad_item_creates_nothing_and_names_its_index(api, items, named):
    response = api.post(BATCH, {"executions": items}, format="json")

    assert response.status_code == 400, response.json()
    assert named in response.json()["detail"]
    assert not Execution.objects.exists()


def test_a_batch_is_created_in_order_with_its_links(api):
    response = api.post(
        BATCH, {"executions": [item("a"), item("b", "$0"), item("c", "$0", "$1")]}, format="json"
    )

    assert response.status_code == 201
    a, b, c = (row["execution_id"] for row in response.json()["executions"])
    assert get(api, c)["depends_on"] == [a, b]
    assert response.json()["executions"][0]["status_url"].endswith(f"{URL}/{a}")
    assert len(set(Execution.objects.values_list("batch_id", flat=True))) == 1


def test_a_retried_batch_with_the_same_key_returns_the_same_executions(api):
    body = {"executions": [item("a"), item("b", "$0")]}

    first = api.post(BATCH, body, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    again = api.post(BATCH, body, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    other = api.post(
        BATCH, {"executions": [item("a")]}, format="json", HTTP_IDEMPOTENCY_KEY="batch-1"
    )

    assert first.status_code == again.status_code == 201
    assert first["Idempotent-Replayed"] == "false" and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert other.status_code == 409
    assert Execution.objects.count() == 2


def test_the_sweep_settles_dependents_whose_settle_was_lost(api):
    from executions.dependencies import dependents_settle_missed

    done = create(api, "done")
    gone = create(api, "gone")
    waiting = create(api, "waiting", done)
    doomed = create(api, "doomed", gone)
    # As if their process died between the end and the settle.
    Execution.objects.filter(pk=done).update(status="completed", outputs={})
    Execution.objects.filter(pk=gone).update(status="failed")

    assert dependents_settle_missed() == 2

    assert get(api, waiting)["blocked_by"] == [] and get(api, doomed)["status"] == "failed"
    assert drain() == [waiting]


def test_an_async_target_awaits_its_dependencies_outputs(api):
    @agent("collect_async")
    async def collect_async(inputs, ctx):
        return {"saw": await ctx.dependencies()}

    try:
        first = create(api, "first")
        second = api.post(
            URL, {"type": "agent", "target_id": "collect_async", "depends_on": [first]}, format="json"
        ).json()["execution_id"]
        drain()
        assert get(api, second)["outputs"] == {"saw": {first: {"name": "first", "saw": {}}}}
    finally:
        registry.unregister("agent", "collect_async")


def test_the_admin_shows_upstream_downstream_and_the_batch_graph(api, admin_client):
    from django.urls import reverse

    response = api.post(
        BATCH, {"executions": [item("a"), item("b", "$0"), item("c", "$0", "$1")]}, format="json"
    )
    a, b, c = (row["execution_id"] for row in response.json()["executions"])

    page = admin_client.get(reverse("admin:executions_execution_change", args=[b]))

    assert page.status_code == 200
    html = page.content.decode()
    assert reverse("admin:executions_execution_change", args=[a]) in html  # depends on
    assert reverse("admin:executions_execution_change", args=[c]) in html  # its dependent
    assert "$2 <a" in html and "← $0, $1" in html
