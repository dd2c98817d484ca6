import hashlib
import secrets

from django.conf import settings
from django.db import models

KEY_PREFIX = "ak_"


def hash_api_key(raw_key: str) -> str:
    """Keys are 256-bit random tokens, so a fast digest is enough: no dictionary to defend against."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


class APIKeyQuerySet(models.QuerySet):
    def active(self) -> "APIKeyQuerySet":
        return self.filter(revoked_at__isnull=True, user__is_active=True)


class APIKey(models.Model):
    """An API key of one user. Only the SHA-256 digest is stored; the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text="First characters of the key, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = APIKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


def api_key_create(*, user, name: str = "") -> tuple[APIKey, str]:
    """Create a key for ``user``; returns the row and the raw key, which is not stored anywhere."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = APIKey.objects.create(
        user=user, name=name, prefix=raw_key[:10], key_hash=hash_api_key(raw_key)
    )
    return api_key, raw_key
