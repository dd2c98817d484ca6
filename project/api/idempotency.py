"""``Idempotency-Key``, one rule for both APIs: a retried create gets the object its first request
created.

A key is its owner's: the same key with the same request (method, path and body) returns the
object created first, whatever became of it since; the same key with another request is a 409,
since answering it with the first object would hide that the second was never carried out. A
partial unique index on (owner, idempotency_key) makes that hold for concurrent retries too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Self, TypeVar

from django.db import IntegrityError, models, transaction
from rest_framework.exceptions import APIException

from project.api.errors import Conflict, InvalidInput

IDEMPOTENCY_KEY_MAX_LENGTH = 255

# A model with ``owner``, ``idempotency_key`` and ``request_hash`` columns.
M = TypeVar("M", bound=models.Model)


def key_too_long_message(length: int) -> str:
    return f"Idempotency-Key is too long: {length} characters, the limit is {IDEMPOTENCY_KEY_MAX_LENGTH}."


def request_hash(*, method: str, path: str, body: Any) -> str:
    """SHA-256 of a request as the rule compares them: key order and spacing in the body, and a
    trailing slash on the path, do not make another request."""
    text = json.dumps(
        [method.upper(), path.rstrip("/"), body],
        separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` header and a hash of the request that carried it."""

    key: str
    request_hash: str
    header: str  # the key as the client sent it, for messages

    @classmethod
    def from_header(cls, raw: str | None, *, method: str, path: str, body: Any) -> Self | None:
        if not raw:
            return None
        if len(raw) > IDEMPOTENCY_KEY_MAX_LENGTH:
            raise cls.key_too_long(len(raw))
        return cls(key=raw, request_hash=request_hash(method=method, path=path, body=body), header=raw)

    @classmethod
    def key_too_long(cls, length: int) -> APIException:
        """The error for a key over the limit, in the API's own shape: here the executions API's
        400 with per-field ``errors``; the runs API answers its 422."""
        return InvalidInput({"Idempotency-Key": [key_too_long_message(length)]})

    def batch_item(self, index: int) -> Self:
        """The key of the ``index``-th object of a batch; the hash stays the whole batch's, so any
        change to the batch is a conflict."""
        return replace(self, key=f"{self.key}/batch/{index}")

    def stored(self) -> dict[str, str]:
        """The columns that remember the key on the created row."""
        return {"idempotency_key": self.key, "request_hash": self.request_hash}


def create_once(
    model: type[M], *, owner: Any, idempotency: Idempotency, what: str, create: Callable[[], M],
    gone: Callable[[], Any] | None = None,
) -> tuple[Any, bool]:
    """``create()`` unless ``owner`` already created a ``model`` with this key: then that one (or
    what ``gone()`` kept of it). Returns (object, created). The same key with another request is
    a 409 ``Conflict``."""

    def original() -> Any:
        existing = model._default_manager.filter(owner=owner, idempotency_key=idempotency.key).first()
        return existing if existing is not None or gone is None else gone()

    existing = original()
    if existing is None:
        try:
            with transaction.atomic():
                return create(), True
        except (IntegrityError, APIException) as exc:
            if isinstance(exc, APIException) and exc.status_code != Conflict.status_code:
                raise
            # A twin request with the same key may have won a moment ago: the unique index (or,
            # for a run, the thread's lock and a multitask reject) made us wait for it. Answer
            # with its object.
            existing = original()
            if existing is None:
                raise
    # Rows keyed before their request was hashed carry no hash: their key alone decides.
    if existing.request_hash and existing.request_hash != idempotency.request_hash:
        raise Conflict(
            f"Idempotency-Key '{idempotency.header}' was already used for another request, which "
            f"created {what} {existing.pk}. Repeat that request exactly to get it again, or use a "
            "new key."
        )
    return existing, False
