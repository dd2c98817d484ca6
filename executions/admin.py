"""Staff view of every execution: status badges, live progress bars, cancel/retry, timeline.

The admin is read-only on purpose: an execution's row is changed only by the services and the
runtime (conditional UPDATEs), never by a form. Staff act on executions through the "Cancel" and
"Retry" actions and the cancel button, which call ``executions.services``.

Live progress: ``static/executions/admin_progress.js`` opens ONE server-sent events stream
(``progress/stream/``, see ``executions.admin_streams``) for all the active executions on the page
and patches their badge, bar and duration in place whenever a snapshot arrives; it falls back to
polling the ``progress/`` JSON URL where EventSource is missing or the stream keeps failing. The
markup it patches is rendered here, from the same ``_progress_snapshot`` both endpoints send, so
the first paint and the updates never disagree.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.forms import Media
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.http.response import HttpResponseBase
from django.urls import URLPattern, path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from executions.admin_streams import MAY_NOT_VIEW, USE_GET, progress_stream
from executions.models import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    Execution,
    ExecutionDependency,
    ExecutionEvent,
    ExecutionStatus,
)
from executions.pagination import EstimatedCountPaginator
from executions.services import execution_cancel, executions_cancel_many, executions_retry_many
from executions.statements import indexed_distinct_values
from project.api.errors import BadRequest, Conflict, ErrorStyle, MethodNotAllowed, error_response
from project.api.renderers import json_text
from project.durations import format_duration
from project.realtime.sse import staff_check
from project.uuid_prefix import uuid_prefix_range

# The progress endpoints answer for one changelist page at most; more ids is a client bug.
PROGRESS_MAX_IDS = 200
# Events shown on the change page; a long `sleep` writes thousands of progress events.
TIMELINE_LIMIT = 300


# --- rendering shared by the changelist, the change page and the JSON endpoint ------------------


def _step_label(execution: Execution) -> str:
    parts = []
    if execution.total_steps:
        parts.append(f"step {execution.current_step}/{execution.total_steps}")
    if execution.step_name:
        parts.append(execution.step_name)
    return " · ".join(parts)


def _progress_snapshot(execution: Execution) -> dict[str, Any]:
    """What the page shows about one execution's state; also the JSON endpoint's item shape."""
    return {
        "id": str(execution.pk),
        "status": execution.status,
        "status_label": ExecutionStatus(execution.status).label,
        "active": execution.is_active,
        "current_step": execution.current_step,
        "total_steps": execution.total_steps,
        "step_name": execution.step_name,
        "percentage": execution.percentage,
        "percentage_label": f"{execution.percentage:.0f}%",
        "step_label": _step_label(execution),
        "duration": format_duration(execution.duration_seconds),
        # The execution's last event number: a snapshot is new when this moved.
        "seq": execution.event_seq,
    }


def parse_progress_ids(raw: str) -> list[uuid.UUID]:
    """The ids of ``?ids=a,b,c``; ``ValueError`` with a message for staff when they are unusable."""
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if not parts:
        raise ValueError("Pass the execution ids as ?ids=<uuid>,<uuid>.")
    if len(parts) > PROGRESS_MAX_IDS:
        raise ValueError(f"At most {PROGRESS_MAX_IDS} ids per request.")
    ids = []
    for part in parts:
        try:
            ids.append(uuid.UUID(part))
        except ValueError:
            raise ValueError(f"Not an execution id: {part[:60]!r}.") from None
    return list(dict.fromkeys(ids))


def progress_snapshots(ids: Iterable[uuid.UUID | str]) -> list[dict[str, Any]]:
    """The current snapshot of each of these executions that exists, in one query."""
    executions = Execution.objects.filter(pk__in=list(ids)).only(
        "id",
        "status",
        "current_step",
        "total_steps",
        "step_name",
        "percentage",
        "started_at",
        "completed_at",
        "cancelled_at",
        "event_seq",
    )
    return [_progress_snapshot(execution) for execution in executions]


def _status_badge(execution: Execution) -> SafeString:
    snapshot = _progress_snapshot(execution)
    return format_html(
        '<span class="exec-status exec-status--{}" data-execution-id="{}" '
        'data-execution-field="status" data-active="{}">{}</span>',
        snapshot["status"],
        snapshot["id"],
        "true" if snapshot["active"] else "false",
        snapshot["status_label"],
    )


def _progress_bar(execution: Execution) -> SafeString:
    snapshot = _progress_snapshot(execution)
    width = f"{execution.percentage:.2f}"
    return format_html(
        '<div class="exec-progress exec-progress--{}" data-execution-id="{}" '
        'data-execution-field="progress">'
        '<div class="exec-progress__track" role="progressbar" aria-valuemin="0" '
        'aria-valuemax="100" aria-valuenow="{}">'
        '<div class="exec-progress__fill" style="width: {}%"></div></div>'
        '<span class="exec-progress__pct">{}</span>'
        '<span class="exec-progress__step">{}</span></div>',
        snapshot["status"],
        snapshot["id"],
        width,
        width,
        snapshot["percentage_label"],
        snapshot["step_label"],
    )


def _duration(execution: Execution) -> SafeString:
    return format_html(
        '<span data-execution-id="{}" data-execution-field="duration">{}</span>',
        str(execution.pk),
        format_duration(execution.duration_seconds),
    )


def _pretty_json(value: Any) -> SafeString:
    if value is None:
        return format_html('<span class="exec-empty">{}</span>', "-")
    text = json_text(value, indent=2, sort_keys=False)
    return format_html('<pre class="exec-json">{}</pre>', text)


def _id_search(term: str) -> Q | None:
    """A condition matching executions whose id is ``term`` or starts with it, or None.

    A range of the primary key, read off its index on every database; a fragment from the middle
    of an id would need a scan of every row, so it matches nothing.
    """
    id_range = uuid_prefix_range(term)
    if id_range is None:
        return None
    return Q(pk__gte=id_range[0], pk__lte=id_range[1])


def _targets_used() -> list[str]:
    return indexed_distinct_values(Execution, "target_id")


# --- filters ----------------------------------------------------------------------------------------


class TargetFilter(admin.SimpleListFilter):
    title = "target"
    parameter_name = "target"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(target, target) for target in _targets_used()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value():
            return queryset.filter(target_id=self.value())
        return queryset


class PriorityFilter(admin.SimpleListFilter):
    """The priorities there can be, highest first: Django's default filter for a field without
    choices lists the values present with a SELECT DISTINCT over the whole table."""

    title = "priority"
    parameter_name = "priority__exact"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(str(value), str(value)) for value in range(PRIORITY_MAX, PRIORITY_MIN - 1, -1)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value():
            try:
                return queryset.filter(priority=int(self.value() or ""))
            except ValueError:
                return queryset.none()
        return queryset


class OwnerFilter(admin.SimpleListFilter):
    """The owners that have executions (Django's RelatedOnlyFieldListFilter asks that with a
    SELECT DISTINCT over the whole table)."""

    title = "owner"
    parameter_name = "owner__id__exact"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        owner_ids = indexed_distinct_values(Execution, "owner_id")
        users = get_user_model().objects.filter(pk__in=owner_ids).order_by("username")
        return [(str(user.pk), str(user)) for user in users]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value():
            try:
                return queryset.filter(owner_id=int(self.value() or ""))
            except ValueError:
                return queryset.none()
        return queryset


# --- the admin ---------------------------------------------------------------------------------------


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    change_list_template = "admin/executions/execution/change_list.html"
    change_form_template = "admin/executions/execution/change_form.html"

    list_display = (
        "short_id",
        "status_badge",
        "type",
        "target_id",
        "priority",
        "owner",
        "progress",
        "duration",
        "created_at",
    )
    list_display_links = ("short_id",)
    list_filter = (
        "status",
        "type",
        PriorityFilter,
        TargetFilter,
        OwnerFilter,
        "created_at",
    )
    list_select_related = ("owner",)
    # No date_hierarchy: its drill-down reads every row's date; the created_at filter does not.
    search_fields = ("target_id",)
    search_help_text = "Search by execution id (full, or its first characters) or target."
    # A million rows: no COUNT(*) of the table, an estimated count of the filtered rows and no
    # facet counts (each one a GROUP BY over the table).
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    actions = ("cancel_selected", "retry_selected")

    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id", "status_badge", "type", "target_id", "priority", "owner", "retry_of",
                    "retries", "schedule",
                )
            },
        ),
        ("Progress", {"fields": ("progress", "duration")}),
        ("Dependencies", {"fields": ("upstream", "downstream", "batch_graph")}),
        (
            "Timing",
            {
                "fields": (
                    "created_at",
                    "started_at",
                    "completed_at",
                    "cancelled_at",
                    "heartbeat_at",
                    "worker",
                    "attempts",
                )
            },
        ),
        ("Data", {"fields": ("inputs_pretty", "config_pretty", "outputs_pretty", "error_pretty")}),
    )
    readonly_fields = (
        "upstream",
        "downstream",
        "batch_graph",
        "id",
        "status_badge",
        "type",
        "target_id",
        "priority",
        "owner",
        "retry_of",
        "retries",
        "schedule",
        "progress",
        "duration",
        "created_at",
        "started_at",
        "completed_at",
        "cancelled_at",
        "heartbeat_at",
        "worker",
        "attempts",
        "inputs_pretty",
        "config_pretty",
        "outputs_pretty",
        "error_pretty",
    )

    @property
    def media(self) -> Media:
        return super().media + Media(
            js=["executions/admin_progress.js"], css={"all": ["executions/admin.css"]}
        )

    # --- permissions: nothing is edited, added or deleted through forms --------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Executions are created through the API or `manage.py execute`, which validate inputs.
        return False

    def has_change_permission(self, request: HttpRequest, obj: Execution | None = None) -> bool:
        # Status and progress belong to the services and the worker; the change page is a view.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Execution | None = None) -> bool:
        # Deleting a running row would leave its worker writing into nothing; use `prune`.
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """May cancel and retry: the model's change permission, which superusers always hold."""
        opts = self.opts
        return (
            request.user.is_active
            and request.user.is_staff
            and request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")
        )

    # --- columns and fields ----------------------------------------------------------------------

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: Execution) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Execution) -> SafeString:
        return _status_badge(obj)

    @admin.display(description="progress", ordering="percentage")
    def progress(self, obj: Execution) -> SafeString:
        return _progress_bar(obj)

    @admin.display(description="duration")
    def duration(self, obj: Execution) -> SafeString:
        return _duration(obj)

    @admin.display(description="retried as")
    def retries(self, obj: Execution) -> SafeString:
        retries = list(obj.retries.order_by("created_at").values_list("pk", flat=True))
        if not retries:
            return format_html("{}", self.get_empty_value_display())
        return format_html_join(
            ", ",
            '<a href="{}">{}</a>',
            (
                (reverse("admin:executions_execution_change", args=[pk]), str(pk)[:8])
                for pk in retries
            ),
        )

    @admin.display(description="depends on")
    def upstream(self, obj: Execution) -> SafeString:
        rows = Execution.objects.filter(downstream_links__downstream=obj).order_by("created_at")
        return self._execution_links(rows.values_list("pk", "target_id", "status"))

    @admin.display(description="its dependents")
    def downstream(self, obj: Execution) -> SafeString:
        rows = Execution.objects.filter(upstream_links__upstream=obj).order_by("created_at")
        return self._execution_links(rows.values_list("pk", "target_id", "status"))

    def _execution_links(self, rows: Iterable[tuple[uuid.UUID, str, str]]) -> SafeString:
        rows = list(rows)
        if not rows:
            return format_html("{}", self.get_empty_value_display())
        return format_html_join(
            ", ", '<a href="{}">{}</a> {} ({})',
            (
                (reverse("admin:executions_execution_change", args=[pk]), str(pk)[:8], target, status)
                for pk, target, status in rows
            ),
        )

    @admin.display(description="its batch")
    def batch_graph(self, obj: Execution) -> SafeString:
        """The batch it came in, one line per execution in the batch's order with the items it
        waits for: a small picture of the batch's graph."""
        if obj.batch_id is None:
            return format_html("{}", self.get_empty_value_display())
        members = list(
            Execution.objects.filter(batch_id=obj.batch_id)
            .order_by("created_at", "id").values_list("pk", "target_id", "status")
        )
        index = {pk: position for position, (pk, _, _) in enumerate(members)}
        waits: dict[uuid.UUID, list[str]] = {pk: [] for pk in index}
        for upstream_id, downstream_id in ExecutionDependency.objects.filter(
            downstream__batch_id=obj.batch_id
        ).values_list("upstream_id", "downstream_id"):
            waits[downstream_id].append(
                f"${index[upstream_id]}" if upstream_id in index else str(upstream_id)[:8]
            )
        lines = format_html_join(
            "",
            '<li{}>${} <a href="{}">{}</a> {} <span class="status-{}">{}</span>{}</li>',
            (
                (
                    format_html(' style="{}"', "font-weight: bold") if pk == obj.pk else "",
                    position, reverse("admin:executions_execution_change", args=[pk]),
                    str(pk)[:8], target, status, status,
                    f" ← {', '.join(sorted(waits[pk]))}" if waits[pk] else "",
                )
                for position, (pk, target, status) in enumerate(members)
            ),
        )
        return format_html('<ul class="batch-graph">{}</ul>', lines)

    @admin.display(description="inputs")
    def inputs_pretty(self, obj: Execution) -> SafeString:
        return _pretty_json(obj.inputs)

    @admin.display(description="config")
    def config_pretty(self, obj: Execution) -> SafeString:
        return _pretty_json(obj.config)

    @admin.display(description="outputs")
    def outputs_pretty(self, obj: Execution) -> SafeString:
        return _pretty_json(obj.outputs)

    @admin.display(description="error")
    def error_pretty(self, obj: Execution) -> SafeString:
        error = obj.error
        traceback = None
        if isinstance(error, dict) and isinstance(error.get("details"), dict):
            traceback = error["details"].get("traceback")
            if isinstance(traceback, str):
                # Escaped newlines make a traceback unreadable; it gets a <pre> of its own.
                error = {**error, "details": {**error["details"], "traceback": "(shown below)"}}
            else:
                traceback = None
        if traceback is None:
            return _pretty_json(error)
        return format_html(
            '{}<pre class="exec-json exec-traceback">{}</pre>', _pretty_json(error), traceback
        )

    # --- search ------------------------------------------------------------------------------------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Each word must match a target (contains, any case) or the execution id (full or prefix).

        The word is matched against the targets in use (a handful, read off an index), so the
        rows are then found by an index on target_id rather than a LIKE over every row."""
        targets = _targets_used() if search_term.split() else []
        for term in search_term.split():
            condition = Q(pk__in=[])
            matching = [target for target in targets if term.lower() in target.lower()]
            if matching:
                condition |= Q(target_id__in=matching)
            id_condition = _id_search(term)
            if id_condition is not None:
                condition |= id_condition
            queryset = queryset.filter(condition)
        return queryset, False

    # --- actions -----------------------------------------------------------------------------------

    @admin.action(description="Cancel selected executions", permissions=["operate"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        result = executions_cancel_many(executions=list(queryset))
        changed, skipped = len(result.changed), len(result.skipped)
        self.message_user(
            request,
            f"Cancelled {_count(changed)}; skipped {_count(skipped)} that "
            f"{'was' if skipped == 1 else 'were'} not pending or running.",
            messages.SUCCESS if changed else messages.WARNING,
        )

    @admin.action(description="Retry selected executions", permissions=["operate"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        created, skipped = executions_retry_many(executions=list(queryset))
        self.message_user(
            request,
            f"Retried {_count(len(created))} as new executions; skipped {_count(len(skipped))} "
            "still pending or running (or whose target is no longer registered).",
            messages.SUCCESS if created else messages.WARNING,
        )

    # --- custom URLs: cancel button and live progress -------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        custom = [
            # Before the default `<path:object_id>/` pattern, which would swallow "progress/".
            path("progress/", self.progress_view, name=f"{prefix}_progress"),
            path("progress/stream/", self.progress_stream_view, name=f"{prefix}_progress_stream"),
            path(
                "<path:object_id>/cancel/",
                self.admin_site.admin_view(require_POST(self.cancel_view)),
                name=f"{prefix}_cancel",
            ),
        ]
        return custom + super().get_urls()

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's cancel button: POST only, CSRF-checked by ``admin_view``."""
        if not self.has_operate_permission(request):
            raise PermissionDenied
        execution = self.get_object(request, object_id)  # None for unknown or malformed ids
        if execution is None:
            raise Http404("No execution with this id.")
        try:
            execution_cancel(execution=execution)
        except Conflict as exc:
            self.message_user(request, str(exc.detail), messages.ERROR)
        else:
            self.message_user(request, f"Cancelled execution {execution.pk}.", messages.SUCCESS)
        return HttpResponseRedirect(
            reverse("admin:executions_execution_change", args=[execution.pk])
        )

    def progress_view(self, request: HttpRequest) -> JsonResponse:
        """``GET progress/?ids=a,b`` -> the current snapshot of each of those executions.

        Neither progress endpoint is wrapped in ``admin_view`` (which is sync-only, and would
        redirect): a script following progress needs a 403, not the login page, when the session
        ends.
        """
        try:
            if request.method != "GET":
                raise MethodNotAllowed(request.method or "", allow="GET", detail=USE_GET)
            staff_check(request, may_view=self.has_view_permission, refusal=MAY_NOT_VIEW)
            try:
                ids = parse_progress_ids(request.GET.get("ids", ""))
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        except APIException as exc:
            return error_response(exc, style=ErrorStyle.EXECUTIONS)
        response = JsonResponse({"executions": progress_snapshots(ids)})
        add_never_cache_headers(response)
        return response

    async def progress_stream_view(self, request: HttpRequest) -> HttpResponseBase:
        """``GET progress/stream/?ids=a,b`` -> SSE: a ``snapshot`` of each execution at once and
        whenever its events move, until none of them is active (``executions.admin_streams``)."""
        return await progress_stream(
            request,
            may_view=self.has_view_permission,
            parse_ids=parse_progress_ids,
            snapshots=progress_snapshots,
        )

    # --- views -------------------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("owner", "retry_of")

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), **self._progress_context()}
        return super().changelist_view(request, extra_context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), **self._progress_context()}
        execution = self.get_object(request, object_id)
        if execution is not None:
            events = list(execution.events.order_by("-seq")[:TIMELINE_LIMIT])
            events.reverse()
            extra_context.update(
                timeline=[
                    {
                        "seq": event.seq,
                        "at": event.at,
                        "type": event.get_type_display(),
                        "type_code": event.type,
                        "data": json_text(event.data, sort_keys=True),
                    }
                    for event in events
                ],
                # event_seq is the last number used, so the row already knows the total.
                timeline_total=execution.event_seq,
                timeline_truncated=execution.event_seq > len(events),
                timeline_all_url=reverse("admin:executions_executionevent_changelist")
                + f"?execution={execution.pk}",
                can_cancel=execution.is_active and self.has_operate_permission(request),
                cancel_url=reverse("admin:executions_execution_cancel", args=[execution.pk]),
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def _progress_context(self) -> dict[str, Any]:
        return {
            "execution_progress_config": {
                "url": reverse("admin:executions_execution_progress"),
                "streamUrl": reverse("admin:executions_execution_progress_stream"),
                "intervalMs": 1000,
            }
        }


def _count(n: int) -> str:
    return f"{n} execution" if n == 1 else f"{n} executions"


@admin.register(ExecutionEvent)
class ExecutionEventAdmin(admin.ModelAdmin):
    """Every event of an execution (``?execution=<id>``); its page shows only the latest ones."""

    list_display = ("seq", "execution", "type", "data_preview", "at")
    list_display_links = None
    list_per_page = 200
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    show_facets = admin.ShowFacets.NEVER
    ordering = ("execution", "seq")

    @admin.display(description="data")
    def data_preview(self, event: ExecutionEvent) -> str:
        text = json_text(event.data, sort_keys=True)
        return text if len(text) <= 300 else text[:300] + "…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
