"""The admin site whose index is the operations page (``operations.dashboard``), installed as the
default site (``operations.apps.OperationsAdminConfig``), so every app's ``admin.site.register`` lands on it."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path

from operations.charts import legend, stacked_bars
from operations.dashboard import dashboard


def _context() -> dict[str, Any]:
    board = dashboard()
    charts = [
        {
            "kind": minute.kind,
            "total": minute.total,
            "svg": stacked_bars(minute.counts, minute.statuses, title=f"{minute.kind}s per minute"),
            "legend": legend(minute.statuses),
        }
        for minute in board.per_minute
    ]
    return {"board": board, "charts": charts}


class OperationsAdminSite(admin.AdminSite):
    site_header = "Agent Jobs"
    site_title = "Agent Jobs admin"
    index_title = "Operations"
    index_template = "admin/operations/index.html"

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        return super().index(request, {**_context(), **(extra_context or {})})

    def operations_panel(self, request: HttpRequest) -> TemplateResponse:
        """The page's live part alone, fetched by its script every few seconds."""
        return TemplateResponse(request, "admin/operations/panel.html", _context())

    def get_urls(self) -> list[URLResolver | URLPattern]:
        return [
            path("operations/panel/", self.admin_view(self.operations_panel), name="operations_panel"),
            *super().get_urls(),
        ]
