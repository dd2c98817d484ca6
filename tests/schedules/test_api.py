"""The schedules REST API as a client sees it."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from executions.models import Execution
from schedules.models import Schedule

pytestmark = pytest.mark.django_db

URL = "/api/v1/schedules"


def create(client, **body):
    body.setdefault("type", "agent")
    body.setdefault("target_id", "echo")
    body.setdefault("cron", "*/5 * * * *")
    return client.post(URL, body, format="json")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- create -------------------------------------------------------------------------------------


def test_create_answers_201_with_the_id_and_the_next_fire_time(api):
    before = timezone.now()
    response = create(api, inputs={"hello": "world"}, cron="0 9 * * *", timezone="Europe/Paris")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["schedule_id"] and response["Location"].endswith(f"{URL}/{body['schedule_id']}")
    assert body["enabled"] is True and body["overlap"] == "skip" and body["last_run_at"] is None
    next_run = parse(body["next_run_at"])
    # 09:00 in Paris, the first one after now, whatever the season.
    local = next_run.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute, local.second) == (9, 0, 0)
    assert before < next_run <= before + timedelta(days=1)
    assert api.get(f"{URL}/{body['schedule_id']}").json() == body


def test_create_every_five_minutes_in_utc_by_default(api):
    body = create(api, cron="*/5 * * * *").json()
    next_run = parse(body["next_run_at"])
    assert body["timezone"] == "UTC"
    assert next_run.minute % 5 == 0 and next_run.second == 0
    assert timedelta(0) < next_run - timezone.now() <= timedelta(minutes=5)


def test_a_disabled_schedule_has_no_next_run(api):
    body = create(api, enabled=False).json()
    assert body["enabled"] is False and body["next_run_at"] is None


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"cron": "61 * * * *"}, "cron", "not a valid cron expression"),
        ({"cron": "* * * *"}, "cron", "must have 5 fields"),
        ({"cron": "* * * * * *"}, "cron", "must have 5 fields"),
        ({"cron": "0 0 31 2 *"}, "cron", "never fires"),
        ({"cron": "@often"}, "cron", "Unknown cron macro"),
        ({"cron": ""}, "cron", "may not be blank"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Unknown timezone 'Mars/Olympus'"),
        ({"target_id": "nope"}, "target_id", "No agent named 'nope'"),
        ({"target_id": "sleep", "inputs": {}}, "inputs", "This field is required"),
        ({"target_id": "sleep", "inputs": {"seconds": "soon"}}, "inputs", "A valid number"),
        ({"config": {"max_attempts": 0}}, "config", "greater than or equal to 1"),
        ({"webhook": "ftp://example.com/hook"}, "webhook", "http or https"),
        ({"overlap": "sometimes"}, "overlap", "not a valid choice"),
        ({"type": "robot"}, "type", "not a valid choice"),
        ({"enabeld": False}, "enabeld", "Unknown field"),
    ],
)
def test_create_refuses_bad_input_with_400_naming_the_field(api, body, field, says):
    response = create(api, **body)

    assert response.status_code == 400
    answer = response.json()
    assert field in answer["errors"], answer
    assert says in answer["detail"], answer
    assert not Schedule.objects.exists()


def test_create_needs_cron(api):
    response = api.post(URL, {"type": "agent", "target_id": "echo"}, format="json")
    assert response.status_code == 400
    assert "cron" in response.json()["errors"]


def test_anonymous_requests_are_refused(client):
    assert client.get(URL).status_code == 401
    assert client.post(URL, {}, content_type="application/json").status_code == 401


# --- list ---------------------------------------------------------------------------------------


def test_list_filters_and_pages_like_executions(api, bob_api):
    for index in range(3):
        create(api, target_id="echo", inputs={"n": index})
    create(api, target_id="sleep", inputs={"seconds": 1}, enabled=False)
    create(api, type="pipeline", target_id="countdown", inputs={"steps": 2}, overlap="queue")
    create(bob_api)  # somebody else's: never listed

    everything = api.get(URL).json()
    assert everything["count"] == 5 and everything["page"] == 1 and everything["page_size"] == 20
    assert len(everything["schedules"]) == 5

    assert api.get(URL, {"target_id": "echo"}).json()["count"] == 3
    assert api.get(URL, {"target_id": ["echo", "sleep"]}).json()["count"] == 4
    assert api.get(URL, {"type": "pipeline"}).json()["count"] == 1
    assert api.get(URL, {"enabled": "false"}).json()["schedules"][0]["target_id"] == "sleep"
    assert api.get(URL, {"enabled": "true"}).json()["count"] == 4
    assert api.get(URL, {"overlap": "queue"}).json()["count"] == 1

    page = api.get(URL, {"page": 2, "page_size": 2}).json()
    assert page["count"] == 5 and len(page["schedules"]) == 2
    assert api.get(URL, {"page": 9}).json()["schedules"] == []

    ordered = api.get(URL, {"ordering": "next_run_at"}).json()["schedules"]
    assert ordered[-1]["next_run_at"] is None  # the paused one sorts last


@pytest.mark.parametrize(
    "params", [{"enabled": "maybe"}, {"page": 0}, {"page_size": 101}, {"type": "robot"}]
)
def test_list_refuses_bad_parameters_with_400(api, params):
    response = api.get(URL, params)
    assert response.status_code == 400, response.content


# --- retrieve, update, delete -------------------------------------------------------------------


def test_patch_changes_only_what_is_sent_and_re_times_a_new_cron(api):
    schedule = create(api, inputs={"a": 1}).json()
    url = f"{URL}/{schedule['schedule_id']}"

    response = api.patch(url, {"cron": "0 * * * *", "timezone": "Asia/Kolkata"}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["cron"] == "0 * * * *" and body["inputs"] == {"a": 1}
    local = parse(body["next_run_at"]).astimezone(ZoneInfo("Asia/Kolkata"))
    assert local.minute == 0 and parse(body["next_run_at"]) > timezone.now()

    paused = api.patch(url, {"enabled": False}, format="json").json()
    assert paused["enabled"] is False and paused["next_run_at"] is None
    resumed = api.patch(url, {"enabled": True}, format="json").json()
    assert resumed["next_run_at"] is not None

    changed = api.patch(url, {"target_id": "sleep", "inputs": {"seconds": 2}}, format="json").json()
    assert (changed["target_id"], changed["inputs"]) == ("sleep", {"seconds": 2})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"target_id": "sleep"}, "inputs"),  # sleep needs `seconds`: checked with the stored inputs
        ({"cron": "every minute"}, "cron"),
        ({"timezone": "Paris"}, "timezone"),
        ({"next_run_at": "2030-01-01T00:00:00Z"}, "next_run_at"),
        ({"webhook": "not a url"}, "webhook"),
        ({"enabled": "perhaps"}, "enabled"),
    ],
)
def test_patch_refuses_bad_changes_with_400_and_keeps_the_schedule(api, body, field):
    schedule = create(api, inputs={"a": 1}).json()
    url = f"{URL}/{schedule['schedule_id']}"

    response = api.patch(url, body, format="json")

    assert response.status_code == 400
    assert field in response.json()["errors"], response.json()
    assert api.get(url).json() == schedule


def test_put_is_not_offered(api):
    schedule = create(api).json()
    response = api.put(f"{URL}/{schedule['schedule_id']}", {"cron": "* * * * *"}, format="json")
    assert response.status_code == 405


def test_another_users_schedule_is_a_404_for_every_operation(api, bob_api):
    url = f"{URL}/{create(api).json()['schedule_id']}"

    assert bob_api.get(url).status_code == 404
    assert bob_api.patch(url, {"enabled": False}, format="json").status_code == 404
    assert bob_api.post(f"{url}/trigger").status_code == 404
    assert bob_api.delete(url).status_code == 404
    assert bob_api.get(URL).json()["count"] == 0
    assert api.get(url).json()["enabled"] is True
    assert not Execution.objects.exists()


@pytest.mark.parametrize("pk", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
def test_an_unknown_or_malformed_id_is_a_404(api, pk):
    assert api.get(f"{URL}/{pk}").status_code == 404
    assert api.post(f"{URL}/{pk}/trigger").status_code == 404


# --- trigger, and the executions a schedule starts ----------------------------------------------


def test_trigger_starts_one_execution_now_that_carries_the_schedule_id(api):
    schedule = create(api, inputs={"x": 1}, enabled=False).json()
    url = f"{URL}/{schedule['schedule_id']}"

    response = api.post(f"{url}/trigger")

    assert response.status_code == 201
    execution_id = response.json()["execution_id"]
    assert response["Location"].endswith(f"/api/v1/executions/{execution_id}")
    execution = api.get(f"/api/v1/executions/{execution_id}").json()
    assert execution["schedule_id"] == schedule["schedule_id"]
    assert execution["inputs"] == {"x": 1} and execution["status"] == "pending"
    assert api.get(url).json()["last_run_at"] is not None

    listed = api.get("/api/v1/executions", {"schedule_id": schedule["schedule_id"]}).json()
    assert [row["execution_id"] for row in listed["executions"]] == [execution_id]
    api.post("/api/v1/executions", {"type": "agent", "target_id": "echo"}, format="json")
    assert api.get("/api/v1/executions").json()["count"] == 2
    assert api.get("/api/v1/executions").json()["executions"][0]["schedule_id"] is None


def test_the_executions_url_lists_what_the_schedule_started(api):
    schedule = create(api).json()
    api.post(f"{URL}/{schedule['schedule_id']}/trigger")
    assert api.get(schedule["executions_url"]).json()["count"] == 1


def test_executions_filter_refuses_a_malformed_schedule_id(api):
    response = api.get("/api/v1/executions", {"schedule_id": "nope"})
    assert response.status_code == 400
    assert "schedule_id" in response.json()["errors"]


def test_trigger_of_a_schedule_whose_target_went_away_is_a_400(api):
    schedule = create(api).json()
    Schedule.objects.filter(pk=schedule["schedule_id"]).update(target_id="unregistered")

    response = api.post(f"{URL}/{schedule['schedule_id']}/trigger")

    assert response.status_code == 400
    assert "No agent named 'unregistered'" in response.json()["detail"]


def test_deleting_a_schedule_keeps_its_executions(api):
    schedule = create(api).json()
    url = f"{URL}/{schedule['schedule_id']}"
    execution_id = api.post(f"{url}/trigger").json()["execution_id"]

    assert api.delete(url).status_code == 204

    assert api.get(url).status_code == 404
    execution = api.get(f"/api/v1/executions/{execution_id}").json()
    assert execution["schedule_id"] is None and execution["status"] == "pending"


def test_the_schedules_are_in_the_openapi_document(api):
    schema = api.get("/api/schema/", {"format": "json"}).json()
    paths = schema["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/schedules"])
    assert {"get", "patch", "delete"} <= set(paths["/api/v1/schedules/{schedule_id}"])
    assert "post" in paths["/api/v1/schedules/{schedule_id}/trigger"]
