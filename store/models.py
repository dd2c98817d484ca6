"""Items of the LangGraph long-term memory store: a JSON value under (owner, namespace, key).

A namespace is a tuple of labels; it is stored joined with ``.`` (``NAMESPACE_SEPARATOR``), which
``langgraph.store.base`` forbids inside a label, so the joined text is unambiguous and a namespace
prefix is a text prefix. Namespaces are per owner: two users may both have ``("memories",)``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

NAMESPACE_SEPARATOR = "."


class StoreItemQuerySet(models.QuerySet):
    def live(self) -> StoreItemQuerySet:
        """Items not past their TTL (an expired item is gone for readers before the sweep)."""
        return self.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))

    def expired(self) -> StoreItemQuerySet:
        return self.filter(expires_at__lte=timezone.now())

    def in_namespace(self, namespace: tuple[str, ...] | list[str]) -> StoreItemQuerySet:
        return self.filter(namespace=NAMESPACE_SEPARATOR.join(namespace))

    def under_prefix(self, prefix: tuple[str, ...] | list[str]) -> StoreItemQuerySet:
        """Items whose namespace starts with the labels of ``prefix`` (all items for ``()``)."""
        if not prefix:
            return self
        joined = NAMESPACE_SEPARATOR.join(prefix)
        return self.filter(Q(namespace=joined) | Q(namespace__startswith=joined + NAMESPACE_SEPARATOR))


class StoreItem(models.Model):
    """One stored item. ``ttl_minutes`` is kept so a read can refresh ``expires_at``."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="store_items"
    )
    namespace = models.CharField(max_length=1024)
    key = models.CharField(max_length=1024)
    value = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    ttl_minutes = models.FloatField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # With a store index (store.index): a vector per indexed text of the value, for ``query``.
    vectors = models.JSONField(null=True, blank=True, editable=False)

    objects = StoreItemQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "namespace", "key"], name="store_item_unique_key"),
        ]
        indexes = [
            models.Index(fields=["owner", "namespace", "-updated_at"], name="store_item_owner_ns"),
            models.Index(fields=["expires_at"], name="store_item_expires"),
        ]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.key}"

    @property
    def namespace_tuple(self) -> tuple[str, ...]:
        return tuple(self.namespace.split(NAMESPACE_SEPARATOR)) if self.namespace else ()
