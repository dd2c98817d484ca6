"""The runs API's ``Idempotency-Key``: the platform's one rule (``project.api.idempotency``), with the
real server's 422 for a key over the limit."""

from __future__ import annotations

from rest_framework.exceptions import APIException

from project.api import idempotency
from project.api.idempotency import IDEMPOTENCY_KEY_MAX_LENGTH, create_once, key_too_long_message
from runs.errors import Unprocessable

__all__ = ["IDEMPOTENCY_KEY_MAX_LENGTH", "Idempotency", "create_once"]


class Idempotency(idempotency.Idempotency):
    @classmethod
    def key_too_long(cls, length: int) -> APIException:
        return Unprocessable(key_too_long_message(length))
