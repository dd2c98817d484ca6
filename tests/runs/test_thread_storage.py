"""GET /threads/{thread_id}/storage: the bytes a thread's checkpoints occupy, as stored."""

from __future__ import annotations

import json
import uuid

import pytest

from checkpoints.models import Checkpoint, CheckpointWrite

pytestmark = pytest.mark.django_db


def _thread(api) -> str:
    return api.post("/threads", {"metadata": {"graph_id": "echo"}}, format="json").json()["thread_id"]


def _say(api, thread_id: str, text: str) -> None:
    body = {"values": {"messages": [{"role": "user", "content": text}]}, "as_node": "echo"}
    response = api.post(f"/threads/{thread_id}/state", body, format="json")
    assert response.status_code == 200, response.content


def test_a_new_thread_occupies_nothing(api) -> None:
    thread_id = _thread(api)
    assert api.get(f"/threads/{thread_id}/storage").json() == {
        "thread_id": thread_id,
        "total_bytes": 0,
        "checkpoints": {"count": 0, "bytes": 0},
        "channel_values": {"count": 0, "bytes": 0, "by_channel": {}},
        "pending_writes": {"count": 0, "bytes": 0},
    }


def test_checkpoints_values_and_writes_are_counted_as_stored(api) -> None:
    thread_id = _thread(api)
    _say(api, thread_id, "short")
    first = api.get(f"/threads/{thread_id}/storage").json()
    _say(api, thread_id, "x" * 5000)
    storage = api.get(f"/threads/{thread_id}/storage").json()

    rows = Checkpoint.objects.filter(thread_id=thread_id)
    assert storage["checkpoints"]["count"] == rows.count() >= 2
    messages = storage["channel_values"]["by_channel"]["messages"]
    assert messages["versions"] >= 2
    # The long message is stored in every checkpoint that holds it: at least once.
    assert messages["bytes"] - first["channel_values"]["by_channel"]["messages"]["bytes"] >= 5000
    # Split out of the stored blobs: the parts add up to them, plus the metadata column's JSON.
    blobs = sum(len(bytes(blob)) for blob in rows.values_list("checkpoint", flat=True))
    metadata = sum(
        len(json.dumps(m, separators=(",", ":")).encode()) for m in rows.values_list("metadata", flat=True)
    )
    assert storage["checkpoints"]["bytes"] + storage["channel_values"]["bytes"] == blobs + metadata
    writes = CheckpointWrite.objects.filter(thread_id=thread_id)
    assert storage["pending_writes"] == {
        "count": writes.count(),
        "bytes": sum(len(bytes(v)) for v in writes.values_list("value", flat=True)),
    }
    assert storage["total_bytes"] == (
        storage["checkpoints"]["bytes"] + storage["channel_values"]["bytes"] + storage["pending_writes"]["bytes"]
    )


def test_missing_foreign_and_malformed_threads(api, bob_api) -> None:
    thread_id = _thread(api)
    assert api.get(f"/threads/{uuid.uuid4()}/storage").status_code == 404
    assert bob_api.get(f"/threads/{thread_id}/storage").status_code == 404
    response = api.get("/threads/not-a-uuid/storage")
    assert response.status_code == 422 and response.json() == {"detail": "Invalid thread ID: must be a UUID"}
