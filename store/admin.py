"""The store browser: every user's items for staff, filtered by top-level namespace, searched by
namespace, key or owner, each value shown as JSON."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from store.models import NAMESPACE_SEPARATOR, StoreItem


class NamespaceRootFilter(admin.SimpleListFilter):
    """The first label of the namespace (``users`` for ``("users", "42", "memories")``)."""

    title = "namespace"
    parameter_name = "namespace_root"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        roots = {
            joined.split(NAMESPACE_SEPARATOR, 1)[0]
            for joined in StoreItem.objects.values_list("namespace", flat=True).distinct()[:1000]
        }
        return [(root, root) for root in sorted(roots)[:100]]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        root = self.value()
        if not root:
            return queryset
        return queryset.filter(Q(namespace=root) | Q(namespace__startswith=root + NAMESPACE_SEPARATOR))


def _json(value: Any, **options: Any) -> str:
    # ASCII escapes: a lone surrogate in a stored value cannot fail the page.
    return json.dumps(value, ensure_ascii=True, default=str, **options)


@admin.register(StoreItem)
class StoreItemAdmin(admin.ModelAdmin):
    list_display = ("namespace_shown", "key", "owner", "value_preview", "updated_at", "expires_at")
    list_filter = (NamespaceRootFilter, "owner")
    search_fields = ("namespace", "key", "owner__username")
    list_select_related = ("owner",)
    ordering = ("-updated_at",)
    readonly_fields = (
        "owner", "namespace_shown", "key", "value_json", "created_at", "updated_at", "ttl_minutes",
        "expires_at",
    )
    fields = readonly_fields

    @admin.display(description="namespace", ordering="namespace")
    def namespace_shown(self, item: StoreItem) -> str:
        return _json(list(item.namespace_tuple))

    @admin.display(description="value")
    def value_preview(self, item: StoreItem) -> str:
        text = _json(item.value)
        return text if len(text) <= 80 else text[:79] + "…"

    @admin.display(description="value")
    def value_json(self, item: StoreItem) -> str:
        return format_html(
            '<pre style="white-space: pre-wrap; max-height: 40em; overflow: auto">{}</pre>',
            _json(item.value, indent=2),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Items are written by their owners through the API or their graphs.
        return False

    def has_change_permission(self, request: HttpRequest, obj: StoreItem | None = None) -> bool:
        return False
