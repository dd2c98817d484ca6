"""Writes of assistants: create (idempotent), new versions, going back to a version, delete.

System assistants (one per registered graph, ``owner`` empty) are shared by every user and never
changed through the API; ``runs.graphs.system_assistants_ensure`` creates them.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from runs.errors import THREAD_OR_ASSISTANT_NOT_FOUND, Conflict, NotFound, Unprocessable
from runs.graphs import graph_ids, system_assistant_id, system_assistants_ensure
from runs.models import Assistant, AssistantVersion
from runs.selectors import assistant_get
from runs.services.idempotency import Idempotency, create_once
from runs.services.inputs import check_json_size, parse_uuid, uuid_or_none


def _graph_not_found(graph_id: str) -> NotFound:
    return NotFound(f"Graph '{graph_id}' not found. Expected one of: {graph_ids()}")


def assistant_for_run(*, user, assistant_id: str) -> Assistant:
    """Resolve a run body's ``assistant_id``: an assistant UUID or a registered graph id."""
    pk = uuid_or_none(assistant_id)
    if pk is None:
        if assistant_id not in graph_ids():
            raise Unprocessable(
                f"Invalid assistant: '{assistant_id}'. Must be either:\n"
                f"- A valid assistant UUID, or\n"
                f"- One of the registered graphs: {', '.join(graph_ids())}"
            )
        pk = system_assistant_id(assistant_id)
        assistant = Assistant.objects.filter(pk=pk).first()
        if assistant is None:
            system_assistants_ensure()
            assistant = Assistant.objects.get(pk=pk)
        return assistant
    try:
        return assistant_get(user=user, assistant_id=pk)
    except NotFound:
        raise NotFound(THREAD_OR_ASSISTANT_NOT_FOUND) from None


def _version_from(assistant: Assistant) -> AssistantVersion:
    return AssistantVersion(
        assistant=assistant,
        version=assistant.version,
        graph_id=assistant.graph_id,
        name=assistant.name,
        description=assistant.description,
        config=assistant.config,
        context=assistant.context,
        metadata=assistant.metadata,
        created_at=assistant.updated_at,
    )


def assistant_create(
    *,
    owner,
    graph_id: str,
    assistant_id: Any = None,
    config: dict | None = None,
    context: dict | None = None,
    metadata: dict | None = None,
    name: str | None = None,
    description: str | None = None,
    if_exists: str = "raise",
    idempotency: Idempotency | None = None,
) -> Assistant:
    """Create an assistant (version 1) of a registered graph."""
    if graph_id not in graph_ids():
        raise _graph_not_found(graph_id)
    check_json_size("metadata", metadata)
    pk = parse_uuid(assistant_id, "assistant") if assistant_id is not None else uuid.uuid4()
    existing = Assistant.objects.filter(pk=pk).first()
    if existing is not None:
        if if_exists == "do_nothing" and (existing.owner_id in (None, owner.pk)):
            return existing
        raise Conflict(f"Assistant with ID {pk} already exists")
    now = timezone.now()
    try:
        with transaction.atomic():
            assistant = Assistant.objects.create(
                assistant_id=pk,
                owner=owner,
                graph_id=graph_id,
                name=name or "Untitled",
                description=description,
                config=config or {},
                context=context or {},
                metadata=metadata or {},
                version=1,
                created_at=now,
                updated_at=now,
                **(idempotency.stored() if idempotency else {}),
            )
            _version_from(assistant).save()
    except IntegrityError:
        raise Conflict(f"Assistant with ID {pk} already exists") from None
    return assistant


def assistant_create_idempotent(*, owner, idempotency: Idempotency | None, **fields: Any) -> tuple[Assistant, bool]:
    """``assistant_create``, or the assistant an earlier request with the same key created."""
    if idempotency is None:
        return assistant_create(owner=owner, **fields), True
    return create_once(
        Assistant, owner=owner, idempotency=idempotency, what="assistant",
        create=lambda: assistant_create(owner=owner, idempotency=idempotency, **fields),
    )


def _own_assistant(user, assistant: Assistant) -> Assistant:
    if assistant.owner_id != user.pk:
        # System assistants are shared by every user; changing one would change it for all.
        raise Conflict(f"Assistant {assistant.pk} is a system assistant and cannot be changed.")
    return assistant


def assistant_update(
    *,
    user,
    assistant: Assistant,
    graph_id: str | None = None,
    config: dict | None = None,
    context: dict | None = None,
    metadata: dict | None = None,
    name: str | None = None,
    description: str | None = None,
) -> Assistant:
    """Save a new version of the assistant and make it current; metadata is merged."""
    _own_assistant(user, assistant)
    if graph_id is not None and graph_id not in graph_ids():
        raise _graph_not_found(graph_id)
    check_json_size("metadata", metadata)
    with transaction.atomic():
        assistant = Assistant.objects.select_for_update().get(pk=assistant.pk)
        latest = assistant.versions.aggregate(latest=Max("version"))["latest"] or assistant.version
        assistant.version = latest + 1
        if graph_id is not None:
            assistant.graph_id = graph_id
        if config is not None:
            assistant.config = config
        if context is not None:
            assistant.context = context
        if metadata is not None:
            assistant.metadata = {**assistant.metadata, **metadata}
            check_json_size("metadata", assistant.metadata)
        if name is not None:
            assistant.name = name
        if description is not None:
            assistant.description = description
        assistant.updated_at = timezone.now()
        assistant.save()
        _version_from(assistant).save()
    return assistant


def assistant_set_latest(*, user, assistant: Assistant, version: int) -> Assistant:
    """Make a saved version current again."""
    _own_assistant(user, assistant)
    saved = assistant.versions.filter(version=version).first()
    if saved is None:
        raise NotFound(f"Version {version} of assistant {assistant.pk} not found")
    Assistant.objects.filter(pk=assistant.pk).update(
        version=saved.version,
        graph_id=saved.graph_id,
        name=saved.name,
        description=saved.description,
        config=saved.config,
        context=saved.context,
        metadata=saved.metadata,
        updated_at=timezone.now(),
    )
    assistant.refresh_from_db()
    return assistant


def assistant_delete(*, user, assistant: Assistant) -> None:
    """Delete an assistant with its versions and runs."""
    _own_assistant(user, assistant)
    assistant.delete()

