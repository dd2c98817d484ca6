"""``Idempotency-Key``: a retried create gets the object its first request created.

A key is the owner's: the same key with the same request (method, path and body) returns the
object created first, whatever became of it since; the same key with another request is a 409.
A partial unique index on (owner, idempotency_key) makes that hold for concurrent retries too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import IntegrityError, transaction

from runs.errors import Conflict, Unprocessable
from runs.models import IdempotentCreate
from runs.services.inputs import compact_json

IDEMPOTENCY_KEY_MAX_LENGTH = 255

M = TypeVar("M", bound=IdempotentCreate)


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` header and a hash of the request that carried it."""

    key: str
    request_hash: str
    header: str  # the key as the client sent it, for messages

    @classmethod
    def from_header(cls, raw: str | None, *, method: str, path: str, body: Any) -> Idempotency | None:
        if not raw:
            return None
        if len(raw) > IDEMPOTENCY_KEY_MAX_LENGTH:
            raise Unprocessable(
                f"Idempotency-Key is too long: {len(raw)} characters, the limit is "
                f"{IDEMPOTENCY_KEY_MAX_LENGTH}."
            )
        digest = hashlib.sha256(compact_json([method.upper(), path, body]).encode()).hexdigest()
        return cls(key=raw, request_hash=digest, header=raw)

    def batch_item(self, index: int) -> Idempotency:
        """The key of the ``index``-th run of a batch; the hash stays the whole batch's, so any
        change to the batch is a conflict."""
        return Idempotency(key=f"{self.key}/batch/{index}", request_hash=self.request_hash, header=self.header)

    def stored(self) -> dict[str, str]:
        return {"idempotency_key": self.key, "request_hash": self.request_hash}


def create_once(
    model: type[M], *, owner, idempotency: Idempotency, what: str, create: Callable[[], M],
    gone: Callable[[], Any] | None = None,
) -> tuple[Any, bool]:
    """``create()`` unless ``owner`` already created a ``model`` with this key: then that one (or
    what ``gone()`` kept of it). Returns (object, created). The same key with another request is
    a 409."""

    def original() -> Any:
        existing = model.objects.filter(owner=owner, idempotency_key=idempotency.key).first()
        return existing if existing is not None or gone is None else gone()

    existing = original()
    if existing is None:
        try:
            with transaction.atomic():
                return create(), True
        except (IntegrityError, Conflict):
            # A twin request with the same key may have won a moment ago: the unique index (or
            # the thread's lock, for a multitask reject) made us wait for it. Answer with its object.
            existing = original()
            if existing is None:
                raise
    if existing.request_hash != idempotency.request_hash:
        raise Conflict(
            f"Idempotency-Key '{idempotency.header}' was already used for another request, which "
            f"created {what} {existing.pk}. Repeat that request exactly to get it again, or use a "
            "new key."
        )
    return existing, False

