"""API keys: ``x-api-key: KEY`` or ``Authorization: Bearer KEY``."""

import copy
import threading
import time

from django.conf import settings
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from accounts.models import APIKey, hash_api_key

INVALID_API_KEY = "Invalid or revoked API key."

# Writing last_used_at on every request would turn each read into a write; once a minute is plenty.
LAST_USED_RESOLUTION_SECONDS = 60


def raw_key_from_headers(headers) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


# key hash -> (monotonic expiry, user). The lookup (a join, compiled by the ORM) was a sixth of the
# server's CPU per API request; a key's owner is remembered for API_KEY_CACHE_SECONDS per process,
# so revoking a key or deactivating its user takes effect within that many seconds. Unknown keys
# are never remembered: a key created a moment ago works at once.
_owners: dict[str, tuple[float, object]] = {}
_owners_lock = threading.Lock()
_OWNERS_MAX = 10_000


def _cache_seconds() -> float:
    return getattr(settings, "API_KEY_CACHE_SECONDS", 5.0)


def user_for_api_key(raw_key: str):
    """The active user owning ``raw_key``, or None (cached for ``API_KEY_CACHE_SECONDS``)."""
    key_hash = hash_api_key(raw_key)
    cached = _owners.get(key_hash)
    if cached is not None and cached[0] > time.monotonic():
        # A copy: requests in other threads must never share one mutable model instance.
        return copy.copy(cached[1])
    user = _user_for_key_hash(key_hash)
    ttl = _cache_seconds()
    if user is not None and ttl > 0:
        with _owners_lock:
            if len(_owners) >= _OWNERS_MAX:
                _owners.clear()  # many distinct keys in a few seconds: start over, stay bounded
            _owners[key_hash] = (time.monotonic() + ttl, copy.copy(user))
    return user


def _user_for_key_hash(key_hash: str):
    api_key = (
        APIKey.objects.active().select_related("user").filter(key_hash=key_hash).first()
    )
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > LAST_USED_RESOLUTION_SECONDS:
        APIKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key.user


class APIKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        raw_key = raw_key_from_headers(request.headers)
        if raw_key is None:
            return None
        user = user_for_api_key(raw_key)
        if user is None:
            raise exceptions.AuthenticationFailed(INVALID_API_KEY)
        return (user, raw_key)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Tells drf-spectacular that both header forms are accepted."""

    target_class = "project.api.auth.APIKeyAuthentication"
    name = ["ApiKeyAuth", "BearerAuth"]

    def get_security_definition(self, auto_schema):
        return [
            {"type": "apiKey", "in": "header", "name": "x-api-key"},
            {"type": "http", "scheme": "bearer"},
        ]
