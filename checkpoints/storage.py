"""How many bytes a thread's checkpoints occupy, as stored (``GET /threads/{id}/storage``).

The saver keeps each checkpoint whole, channel values inline (see ``checkpoints.saver``), so the
split the API reports is measured inside each blob: a checkpoint's channel values are the bytes
each value serializes to, and the checkpoint's own share is its blob minus those, plus its metadata
column. Every checkpoint row holds a copy of every channel's value, so ``channel_values.count``
is the number of stored copies and ``by_channel[...].versions`` the distinct versions among them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import Length
from langgraph.checkpoint.serde.base import SerializerProtocol

from checkpoints.models import Checkpoint, CheckpointWrite

# Rows decoded per query: a long thread is read in slices rather than all at once.
CHUNK = 200


def thread_storage(*, thread_id: str, serde: SerializerProtocol) -> dict[str, Any]:
    """The ``ThreadStorage`` body of a thread (every checkpoint namespace, subgraphs included)."""
    checkpoint_count = checkpoint_bytes = 0
    value_count = value_bytes = 0
    versions: dict[str, set[Any]] = defaultdict(set)
    channel_bytes: dict[str, int] = defaultdict(int)
    rows = Checkpoint.objects.filter(thread_id=thread_id).values_list("type", "checkpoint", "metadata")
    for type_, blob, metadata in rows.iterator(chunk_size=CHUNK):
        raw = bytes(blob)
        checkpoint = serde.loads_typed((type_, raw))
        inline = 0
        channel_versions = checkpoint.get("channel_versions") or {}
        for channel, value in (checkpoint.get("channel_values") or {}).items():
            size = len(serde.dumps_typed(value)[1])
            inline += size
            value_count += 1
            channel_bytes[channel] += size
            versions[channel].add(channel_versions.get(channel))
        value_bytes += inline
        checkpoint_count += 1
        metadata_bytes = len(json.dumps(metadata, separators=(",", ":"), default=str).encode())
        checkpoint_bytes += max(0, len(raw) - inline) + metadata_bytes
    writes = CheckpointWrite.objects.filter(thread_id=thread_id).aggregate(
        count=Count("pk"), bytes=Sum(Length("value"))
    )
    write_bytes = writes["bytes"] or 0
    return {
        "thread_id": thread_id,
        "total_bytes": checkpoint_bytes + value_bytes + write_bytes,
        "checkpoints": {"count": checkpoint_count, "bytes": checkpoint_bytes},
        "channel_values": {
            "count": value_count,
            "bytes": value_bytes,
            "by_channel": {
                channel: {"versions": len(versions[channel]), "bytes": channel_bytes[channel]}
                for channel in sorted(channel_bytes)
            },
        },
        "pending_writes": {"count": writes["count"], "bytes": write_bytes},
    }
