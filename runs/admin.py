"""Staff view of assistants, threads and runs.

Read-only on purpose, like the executions admin: run and thread rows change only through
``runs.services`` and the worker (conditional UPDATEs). Staff cancel runs with the two actions
(interrupt, rollback), which call ``runs.services.runs_cancel``.

Live status: the run changelist and change page render each run's status and duration with data
attributes; ``static/runs/admin_status.js`` follows the active ones over one server-sent events
stream (``status/stream/``, see ``runs.admin_streams``) and patches them in place.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from executions.pagination import EstimatedCountPaginator
from project.api.renderers import json_text
from project.uuid_prefix import uuid_prefix_range
from runs import services
from runs.admin_streams import run_status_snapshot, run_status_stream
from runs.models import (
    Assistant,
    AssistantVersion,
    CancelAction,
    Cron,
    CronFiring,
    Run,
    RunEvent,
    RunStatus,
    Thread,
)
from runs.services.crons import cron_set_enabled

EVENTS_SHOWN = 200


def _pretty_json(value: Any) -> str:
    return format_html(
        '<pre style="white-space: pre-wrap; max-height: 40em; overflow: auto">{}</pre>',
        json_text(value, indent=2, default=str),
    )


def _json_field(name: str) -> Any:
    """A read-only display of the JSON field ``name`` as the admin shows one (compact JSON, "-"
    when empty), which a lone surrogate stored in it cannot turn into a 500."""

    @admin.display(description=name)
    def display(model_admin: Any, obj: Any) -> str:
        value = getattr(obj, name)
        return json_text(value) if value not in (None, "", [], {}) else "-"

    return display


def _owner_condition(term: str) -> Q:
    """Rows owned by the user named ``term``, as an owner_id condition (an index), not a join."""
    owner_ids = list(get_user_model().objects.filter(username=term).values_list("pk", flat=True))
    return Q(owner_id__in=owner_ids) if owner_ids else Q(pk__in=[])


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AssistantVersionInline(admin.TabularInline):
    model = AssistantVersion
    fields = ("version", "graph_id", "name", "config_json", "metadata_json", "created_at")
    readonly_fields = fields
    config_json = _json_field("config")
    metadata_json = _json_field("metadata")
    extra = 0
    can_delete = False
    ordering = ("-version",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Assistant)
class AssistantAdmin(ReadOnlyAdmin):
    list_display = ("name", "graph_id", "assistant_id", "owner", "version", "created_at")
    list_filter = ("graph_id",)
    search_fields = ("name", "assistant_id", "graph_id")
    list_select_related = ("owner",)
    readonly_fields = (
        "assistant_id", "owner", "graph_id", "name", "description", "version", "config_json",
        "context_json", "metadata_json", "created_at", "updated_at",
    )
    fields = readonly_fields
    config_json = _json_field("config")
    context_json = _json_field("context")
    metadata_json = _json_field("metadata")
    inlines = [AssistantVersionInline]


@admin.register(Thread)
class ThreadAdmin(ReadOnlyAdmin):
    list_display = ("thread_id", "owner", "status", "run_count", "latest_run", "updated_at")
    list_filter = ("status", "temporary")
    search_fields = ("thread_id", "owner__username")
    search_help_text = "Search by thread id (full, or its first characters) or owner's username."
    list_select_related = ("owner",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    show_facets = admin.ShowFacets.NEVER
    readonly_fields = (
        "thread_id", "owner", "status", "metadata_json", "created_at", "updated_at",
        "state_updated_at", "error_json", "state_viewer",
    )
    fields = readonly_fields
    metadata_json = _json_field("metadata")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        runs = Run.objects.filter(thread=OuterRef("pk"))
        latest = runs.order_by("-created_at")
        # Subqueries, not Count("runs") with a GROUP BY: those are computed for the page's rows
        # only, where the GROUP BY joined every thread with every run before the LIMIT.
        count = runs.order_by().values("thread").annotate(n=Count("*")).values("n")
        return (
            super()
            .get_queryset(request)
            .annotate(
                _run_count=Coalesce(Subquery(count), 0),
                _latest_run_id=Subquery(latest.values("run_id")[:1]),
                _latest_run_status=Subquery(latest.values("status")[:1]),
            )
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Each word must be the thread's id (full or prefix) or the owner's username (exact)."""
        for term in search_term.split():
            condition = _owner_condition(term)
            id_range = uuid_prefix_range(term)
            if id_range is not None:
                condition |= Q(thread_id__gte=id_range[0], thread_id__lte=id_range[1])
            queryset = queryset.filter(condition)
        return queryset, False

    @admin.display(description="runs")
    def run_count(self, thread: Thread) -> int:
        return thread._run_count  # type: ignore[attr-defined]  # annotated by get_queryset

    @admin.display(description="latest run")
    def latest_run(self, thread: Thread) -> str:
        latest_id = thread._latest_run_id  # type: ignore[attr-defined]  # annotated by get_queryset
        if not latest_id:
            return "-"
        url = reverse("admin:runs_run_change", args=[latest_id])
        status = thread._latest_run_status  # type: ignore[attr-defined]  # annotated by get_queryset
        return format_html('<a href="{}">{}</a>', url, status)

    @admin.display(description="error")
    def error_json(self, thread: Thread) -> str:
        return _pretty_json(thread.error) if thread.error else "-"

    @admin.display(description="state (latest checkpoint)")
    def state_viewer(self, thread: Thread) -> str:
        try:
            state = services.thread_state(thread=thread)
        except Exception as exc:  # noqa: BLE001 a graph that no longer loads must not break the page
            return f"State unavailable: {exc}"
        return _pretty_json({key: state[key] for key in ("values", "next", "interrupts", "checkpoint_id")})


@admin.register(RunEvent)
class RunEventAdmin(ReadOnlyAdmin):
    """Every event of a run (``?run=<run id>``), the run page showing only its latest ones."""

    list_display = ("seq", "run", "event", "data_preview", "created_at")
    list_display_links = None
    list_per_page = 200
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    show_facets = admin.ShowFacets.NEVER
    ordering = ("run", "seq")

    @admin.display(description="data")
    def data_preview(self, event: RunEvent) -> str:
        return event.data if len(event.data) <= 300 else event.data[:300] + "…"

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class GraphFilter(admin.SimpleListFilter):
    title = "graph"
    parameter_name = "graph"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        graph_ids = Assistant.objects.values_list("graph_id", flat=True).distinct().order_by("graph_id")
        return [(graph_id, graph_id) for graph_id in graph_ids]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value():
            return queryset.filter(assistant__graph_id=self.value())
        return queryset


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = (
        "run_id", "status_badge", "thread_link", "assistant_name", "multitask_strategy", "duration",
        "created_at",
    )
    list_filter = ("status", "multitask_strategy", GraphFilter, "created_at")
    search_fields = ("run_id", "thread__thread_id", "owner__username")
    search_help_text = "Search by run or thread id (full, or its first characters) or owner's username."
    list_select_related = ("thread", "assistant")
    # Half a million rows: no date drill-down (it reads every row's date), no COUNT(*) of the
    # table, an estimated count of the filtered rows, no facet counts.
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    show_facets = admin.ShowFacets.NEVER
    actions = ("cancel_interrupt", "cancel_rollback")
    readonly_fields = (
        "run_id", "status_badge", "duration", "thread_link", "assistant_name", "owner",
        "multitask_strategy", "created_at", "started_at", "ended_at", "heartbeat_at", "worker",
        "attempts", "cancel_action", "metadata_json", "kwargs_json", "result_json", "error_json",
        "events",
    )
    fields = readonly_fields
    metadata_json = _json_field("metadata")
    error_json = _json_field("error")

    class Media:
        css = {"all": ("runs/admin_status.css",)}
        js = ("runs/admin_status.js",)

    def _live(self, run: Run, field: str, text: str, css_class: str) -> SafeString:
        snapshot = run_status_snapshot(run)
        return format_html(
            '<span class="{}" data-run-id="{}" data-run-field="{}" data-active="{}" '
            'data-stream-url="{}">{}</span>',
            css_class,
            run.pk,
            field,
            "true" if snapshot["active"] else "false",
            reverse("admin:runs_run_status_stream"),
            text,
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: Run) -> SafeString:
        return self._live(run, "status", run.status, f"run-status run-status--{run.status}")

    @admin.display(description="thread", ordering="thread")
    def thread_link(self, run: Run) -> str:
        url = reverse("admin:runs_thread_change", args=[run.thread_id])
        return format_html('<a href="{}">{}</a>', url, run.thread_id)

    @admin.display(description="assistant", ordering="assistant__name")
    def assistant_name(self, run: Run) -> str:
        return f"{run.assistant.name} ({run.assistant.graph_id})"

    @admin.display(description="duration")
    def duration(self, run: Run) -> SafeString:
        return self._live(run, "duration", run_status_snapshot(run)["duration"], "run-duration")

    def get_urls(self) -> list:
        # Before the default `<path:object_id>/` pattern, which would swallow "status/".
        return [
            path("status/stream/", self.status_stream_view, name="runs_run_status_stream"),
            *super().get_urls(),
        ]

    async def status_stream_view(self, request: HttpRequest) -> HttpResponseBase:
        """``GET status/stream/?ids=a,b`` -> SSE ``status`` events of those runs until none is
        active (``runs.admin_streams``). Not ``admin_view`` (sync-only, and it redirects): a
        script needs a 403 when the session ends."""
        return await run_status_stream(request, may_view=self.has_view_permission)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Each word must be a run's or its thread's id (full or prefix, read off their indexes)
        or the owner's username (exact); a LIKE over half a million ids would read them all."""
        for term in search_term.split():
            condition = _owner_condition(term)
            for field in ("run_id", "thread_id"):
                id_range = uuid_prefix_range(term)
                if id_range is not None:
                    condition |= Q(**{f"{field}__gte": id_range[0], f"{field}__lte": id_range[1]})
            queryset = queryset.filter(condition)
        return queryset, False

    @admin.display(description="events")
    def events(self, run: Run) -> str:
        """The latest ``EVENTS_SHOWN`` events, oldest first, and a link to all of them."""
        latest = list(run.events.order_by("-seq")[:EVENTS_SHOWN])
        latest.reverse()
        if not latest:
            return "-"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            (
                (e.seq, e.event, e.data if len(e.data) <= 500 else e.data[:500] + "…", e.created_at)
                for e in latest
            ),
        )
        url = reverse("admin:runs_runevent_changelist") + f"?run={run.pk}"
        total = run.events.count() if len(latest) == EVENTS_SHOWN else len(latest)
        note = (
            format_html('The latest {} of {} events. <a href="{}">All of them</a>', len(latest), total, url)
            if total > len(latest)
            else format_html('<a href="{}">{} event(s)</a>', url, total)
        )
        return format_html(
            '<p>{}</p><table class="run-events"><thead><tr><th>seq</th><th>event</th><th>data</th>'
            "<th>at</th></tr></thead><tbody>{}</tbody></table>",
            note, rows,
        )

    @admin.display(description="kwargs")
    def kwargs_json(self, run: Run) -> str:
        return _pretty_json(run.kwargs)

    @admin.display(description="result")
    def result_json(self, run: Run) -> str:
        return _pretty_json(run.result) if run.result is not None else "-"

    def _cancel(self, request: HttpRequest, queryset: QuerySet, action: str) -> None:
        selected = list(queryset)
        active = [run for run in selected if run.status in RunStatus.active()]
        cancelled = services.runs_cancel(runs=active, action=action)
        skipped = len(selected) - len(cancelled)
        self.message_user(request, f"Cancelled {len(cancelled)} run(s) ({action}).", messages.SUCCESS)
        if skipped:
            self.message_user(
                request, f"Skipped {skipped} run(s) that were not pending or running.", messages.WARNING
            )

    @admin.action(description="Cancel selected runs (interrupt: keep their checkpoints)")
    def cancel_interrupt(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._cancel(request, queryset, CancelAction.INTERRUPT)

    @admin.action(description="Cancel selected runs (rollback: delete them and their checkpoints)")
    def cancel_rollback(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._cancel(request, queryset, CancelAction.ROLLBACK)


class CronFiringInline(admin.TabularInline):
    model = CronFiring
    fields = ("scheduled_for", "fired_at", "run_link", "thread_id", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    ordering = ("-scheduled_for",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="run")
    def run_link(self, firing: CronFiring) -> str:
        if firing.run_id is None:
            return "-"
        url = reverse("admin:runs_run_change", args=[firing.run_id])
        return format_html('<a href="{}">{}</a>', url, firing.run_id)


@admin.register(Cron)
class CronAdmin(ReadOnlyAdmin):
    list_display = (
        "cron_id", "owner", "assistant_name", "thread_link", "schedule", "timezone", "enabled",
        "next_run_date", "last_fired", "end_time",
    )
    list_filter = ("enabled", GraphFilter)
    search_fields = ("cron_id", "thread__thread_id", "owner__username", "schedule")
    list_select_related = ("owner", "assistant")
    actions = ("enable", "disable")
    readonly_fields = (
        "cron_id", "owner", "assistant_name", "thread_link", "schedule", "timezone", "end_time",
        "enabled", "next_run_date", "on_run_completed", "payload_json", "metadata_json",
        "created_at", "updated_at",
    )
    fields = readonly_fields
    metadata_json = _json_field("metadata")
    inlines = [CronFiringInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        last = CronFiring.objects.filter(cron=OuterRef("pk")).order_by("-scheduled_for")
        return super().get_queryset(request).annotate(_last_fired=Subquery(last.values("fired_at")[:1]))

    @admin.display(description="last fired", ordering="_last_fired")
    def last_fired(self, cron: Cron) -> Any:
        return cron._last_fired or "-"  # type: ignore[attr-defined]  # annotated by get_queryset

    @admin.display(description="assistant", ordering="assistant__name")
    def assistant_name(self, cron: Cron) -> str:
        return f"{cron.assistant.name} ({cron.assistant.graph_id})"

    @admin.display(description="thread")
    def thread_link(self, cron: Cron) -> str:
        if cron.thread_id is None:
            return "(a new thread each run)"
        url = reverse("admin:runs_thread_change", args=[cron.thread_id])
        return format_html('<a href="{}">{}</a>', url, cron.thread_id)

    @admin.display(description="payload")
    def payload_json(self, cron: Cron) -> str:
        return _pretty_json(cron.payload)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet, enabled: bool) -> None:
        selected = list(queryset)
        changed = cron_set_enabled(crons=selected, enabled=enabled)
        verb = "Enabled" if enabled else "Disabled"
        self.message_user(request, f"{verb} {changed} cron(s).", messages.SUCCESS)
        if len(selected) > changed:
            self.message_user(
                request, f"Skipped {len(selected) - changed} cron(s) already {verb.lower()}.", messages.WARNING
            )

    @admin.action(description="Enable selected crons (next run counted from now)")
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected crons")
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_enabled(request, queryset, False)
