"""Webhook URLs checked at create, the delivery's signing, refusal and record, without a cluster:
each attempt is made by calling the delivery, against a real receiver on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from standardwebhooks import Webhook

from executions.models import Execution
from tests.webhooks.receiver import Receiver
from webhooks.delivery import webhook_deliver, webhook_message_record, webhook_redeliver
from webhooks.models import WebhookMessage, WebhookSource, WebhookStatus

pytestmark = pytest.mark.django_db

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REFUSED = [
    "ftp://example.com/hook",
    "not a url",
    "http:///no-host",
    "http://127.0.0.1:9/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.1/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://user:pw@127.0.0.1/hook",
]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served = Receiver()
    yield served
    served.close()


@pytest.mark.parametrize("url", REFUSED)
def test_execution_create_refuses_a_webhook_that_is_not_public_http(api, settings, url):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    response = api.post(
        "/api/v1/executions",
        {"type": "agent", "target_id": "echo", "webhook": url},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "webhook" in response.json()["errors"]
    assert not Execution.objects.exists()


@pytest.mark.parametrize("url", REFUSED)
def test_run_create_refuses_a_webhook_that_is_not_public_http(api, settings, url):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    response = api.post("/runs", {"assistant_id": "echo", "input": {}, "webhook": url}, format="json")
    assert response.status_code == 422, response.content
    assert "detail" in response.json() and "ebhook" in response.json()["detail"]


def test_loopback_webhooks_are_accepted_when_private_addresses_are_allowed(api, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    created = api.post(
        "/api/v1/executions",
        {"type": "agent", "target_id": "echo", "webhook": "http://127.0.0.1:9/hook"},
        format="json",
    )
    assert created.status_code == 201
    assert api.get(created["Location"]).json()["webhook"] == "http://127.0.0.1:9/hook"
    run = api.post(
        "/runs", {"assistant_id": "echo", "input": {}, "webhook": "http://127.0.0.1:9/hook"},
        format="json",
    )
    assert run.status_code == 200, run.content
    assert run.json()["kwargs"]["webhook"] == "http://127.0.0.1:9/hook"


def test_an_execution_without_webhook_shows_null_and_no_deliveries(api):
    created = api.post("/api/v1/executions", {"type": "agent", "target_id": "echo"}, format="json")
    body = api.get(created["Location"]).json()
    assert body["webhook"] is None
    assert api.get(f"/api/v1/executions/{body['execution_id']}/webhooks").json() == {"webhooks": []}


def test_langgraph_json_disable_loopback_false_allows_loopback_run_webhooks(api, settings, tmp_path, monkeypatch):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    config = tmp_path / "langgraph.json"
    config.write_text(json.dumps({
        "graphs": {"echo": "runs.demo_graphs:echo"},
        "webhooks": {"url": {"disable_loopback": False, "require_https": False}},
    }))
    monkeypatch.setenv("LANGGRAPH_CONFIG", str(config))
    body = {"assistant_id": "echo", "input": {}, "webhook": "http://127.0.0.1:9/hook"}
    assert api.post("/runs", body, format="json").status_code == 200
    # Only loopback: a private address stays refused.
    assert api.post("/runs", {**body, "webhook": "http://10.0.0.1/hook"}, format="json").status_code == 422


def _message(url: str, **fields) -> WebhookMessage:
    message = webhook_message_record(
        source=WebhookSource.EXECUTION, source_id="00000000-0000-0000-0000-000000000001", url=url,
        event_type="execution.completed", payload={"type": "execution.completed", "data": {"x": 1}},
        **fields,
    )
    assert message is not None
    return message


def test_a_delivery_is_signed_per_standard_webhooks_and_recorded(settings, receiver):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_SECRET = SECRET
    message = _message(receiver.url)

    assert webhook_deliver(message_id=message.pk) == "delivered"

    [request] = receiver.received
    # The reference library verifies the body bytes against the headers.
    assert Webhook(SECRET).verify(request.body, request.headers) == message.payload
    assert request.headers["webhook-id"] == message.webhook_id
    assert request.headers["content-type"] == "application/json"
    message.refresh_from_db()
    assert message.status == WebhookStatus.DELIVERED
    [attempt] = message.deliveries.all()
    assert (attempt.number, attempt.status_code, attempt.response, attempt.error) == (1, 200, "thanks", "")
    # Claimed and done: a duplicate task sends nothing more.
    assert webhook_deliver(message_id=message.pk) == "skipped"
    assert len(receiver.received) == 1


def test_unsigned_without_a_secret(settings, receiver):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_SECRET = ""
    assert webhook_deliver(message_id=_message(receiver.url).pk) == "delivered"
    assert "webhook-signature" not in receiver.received[0].headers
    assert receiver.received[0].headers["webhook-timestamp"].isdigit()


def test_a_job_ends_once_so_it_has_one_message(settings, receiver):
    _message(receiver.url)
    assert webhook_message_record(
        source=WebhookSource.EXECUTION, source_id="00000000-0000-0000-0000-000000000001",
        url=receiver.url, event_type="execution.cancelled", payload={},
    ) is None
    assert WebhookMessage.objects.count() == 1


def test_a_loopback_url_is_refused_at_send_time_while_private_addresses_are_not_allowed(settings, receiver):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    message = _message(receiver.url)  # stored while allowed, or a name that now resolves to loopback

    assert webhook_deliver(message_id=message.pk) == "failed"

    assert receiver.received == []
    message.refresh_from_db()
    assert message.status == WebhookStatus.FAILED  # refused for good: no retries
    [attempt] = message.deliveries.all()
    assert attempt.status_code is None and "loopback" in attempt.error


def test_failures_back_off_and_give_up_after_max_attempts(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    settings.WEBHOOK_RETRY_BACKOFF = 0
    failing = Receiver(answers=(503,))
    try:
        message = _message(failing.url)
        outcomes = [webhook_deliver(message_id=message.pk) for _ in range(4)]
    finally:
        failing.close()
    assert outcomes == ["retrying", "retrying", "failed", "skipped"]
    message.refresh_from_db()
    assert message.status == WebhookStatus.FAILED
    assert [(a.number, a.status_code, a.error) for a in message.deliveries.all()] == [
        (1, 503, "HTTP 503"), (2, 503, "HTTP 503"), (3, 503, "HTTP 503"),
    ]


def test_a_refused_connection_is_an_attempt_that_failed(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    closed = Receiver()
    url = closed.url
    closed.close()  # nobody listens on that port now
    message = _message(url)
    assert webhook_deliver(message_id=message.pk) == "retrying"
    [attempt] = message.deliveries.all()
    assert attempt.status_code is None and attempt.error.startswith("ConnectError")
    message.refresh_from_db()
    assert message.next_attempt_at is not None and message.status == WebhookStatus.PENDING


def test_redeliver_sends_a_delivered_message_again(settings, receiver):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    message = _message(receiver.url)
    webhook_deliver(message_id=message.pk)
    webhook_redeliver(message=message)
    assert webhook_deliver(message_id=message.pk) == "delivered"
    assert [r.headers["webhook-id"] for r in receiver.received] == [message.webhook_id] * 2
    assert [a.number for a in message.deliveries.all()] == [1, 2]


def test_admin_lists_messages_with_attempts_and_redelivers(settings, receiver, make_user, client):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    message = _message(receiver.url)
    webhook_deliver(message_id=message.pk)
    client.force_login(make_user("staff", staff=True))

    assert client.get("/admin/webhooks/webhookmessage/").status_code == 200
    page = client.get(f"/admin/webhooks/webhookmessage/{message.pk}/change/")
    assert page.status_code == 200 and b"thanks" in page.content
    response = client.post(
        "/admin/webhooks/webhookmessage/",
        {"action": "redeliver", "_selected_action": [str(message.pk)]},
        follow=True,
    )
    assert b"1 webhook queued for redelivery" in response.content
    message.refresh_from_db()
    assert message.status == WebhookStatus.PENDING and message.max_attempts == 1 + settings.WEBHOOK_MAX_ATTEMPTS


@pytest.mark.parametrize(
    "path",
    ["/runs", "/runs/wait", "/runs/stream", "/runs/batch", "/threads/{t}/runs", "/threads/{t}/runs/wait"],
)
def test_every_run_create_refuses_an_invalid_webhook(api, settings, path):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
    body = {"assistant_id": "echo", "input": {}, "webhook": "http://127.0.0.1/hook"}
    response = api.post(path.format(t=thread_id), [body] if path.endswith("batch") else body, format="json")
    assert response.status_code == 422, response.content
    assert "loopback" in response.json()["detail"]


def test_only_a_prefix_of_the_response_is_kept(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_RESPONSE_PREFIX = 100
    chatty = Receiver(body=b"x" * 5_000_000)
    try:
        message = _message(chatty.url)
        assert webhook_deliver(message_id=message.pk) == "delivered"
    finally:
        chatty.close()
    assert message.deliveries.get().response == "x" * 100


def test_cancelling_a_pending_execution_records_execution_cancelled(api, settings, receiver):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    created = api.post(
        "/api/v1/executions", {"type": "agent", "target_id": "echo", "webhook": receiver.url}, format="json"
    ).json()
    cancelled = api.post(f"/api/v1/executions/{created['execution_id']}/cancel").json()
    message = WebhookMessage.objects.get(source=WebhookSource.EXECUTION, source_id=created["execution_id"])
    assert message.event_type == "execution.cancelled"
    assert message.payload["data"]["status"] == "cancelled"
    assert message.payload["timestamp"] == cancelled["cancelled_at"]
    assert {**message.payload["data"], "status_url": cancelled["status_url"]} == cancelled


def test_cancelling_a_pending_run_records_its_interrupted_webhook(api, settings, receiver):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    thread_id = api.post("/threads", {}, format="json").json()["thread_id"]
    run = api.post(
        f"/threads/{thread_id}/runs",
        {"assistant_id": "echo", "input": {}, "webhook": receiver.url, "after_seconds": 600},
        format="json",
    ).json()
    assert api.post(f"/threads/{thread_id}/runs/{run['run_id']}/cancel").status_code in (200, 202)
    message = WebhookMessage.objects.get(source=WebhookSource.RUN, source_id=run["run_id"])
    assert message.event_type == "run.interrupted"
    assert message.payload["status"] == "interrupted" and message.payload["run_id"] == run["run_id"]
    assert message.payload["run_started_at"] is None and message.payload["run_ended_at"]
