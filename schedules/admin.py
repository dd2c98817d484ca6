"""Staff view of every schedule: next and last run, its recent firings and executions, and the
enable, disable and "run now" actions.

Schedules are created and edited through the API, which checks the target, inputs, cron and
time zone; the admin does not offer a form that would skip those checks. The actions call
``schedules.services`` like the API does.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from rest_framework.exceptions import APIException, ValidationError

from executions.models import Execution
from executions.terminal import validation_messages
from schedules.models import Schedule, ScheduleFiring
from schedules.services import schedule_set_enabled, schedule_trigger

# Rows shown on a schedule's page; the full list of its executions is one link away.
RECENT = 20


def _count(n: int, noun: str = "schedule") -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def executions_changelist_url(schedule_id: object) -> str:
    return f"{reverse('admin:executions_execution_changelist')}?schedule={schedule_id}"


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    list_display = (
        "short_id", "target_id", "type", "owner", "cron", "timezone", "enabled", "overlap",
        "next_run_at", "last_run_at", "executions_link",
    )
    list_display_links = ("short_id",)
    list_filter = ("enabled", "type", "overlap", ("owner", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("owner",)
    search_fields = ("target_id", "=id")
    search_help_text = "Search by target, or by the full schedule id."
    ordering = ("-created_at",)
    actions = ("enable_selected", "disable_selected", "run_now")
    fieldsets = (
        (None, {"fields": ("id", "type", "target_id", "owner", "inputs", "config", "webhook")}),
        ("Timing", {"fields": ("cron", "timezone", "enabled", "overlap", "next_run_at", "last_run_at")}),
        ("History", {"fields": ("executions_link", "recent_executions", "recent_firings")}),
    )
    readonly_fields = (
        "id", "type", "target_id", "owner", "inputs", "config", "webhook", "cron", "timezone",
        "enabled", "overlap", "next_run_at", "last_run_at", "executions_link",
        "recent_executions", "recent_firings",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        # The API checks target, inputs, cron and time zone; a form here would skip that.
        return False

    def has_change_permission(self, request: HttpRequest, obj: Schedule | None = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """May enable, disable and run now: the model's change permission (superusers hold it)."""
        opts = self.opts
        return (
            request.user.is_active
            and request.user.is_staff
            and request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")
        )

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: Schedule) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="executions")
    def executions_link(self, obj: Schedule) -> SafeString:
        return format_html('<a href="{}">executions it started</a>', executions_changelist_url(obj.pk))

    @admin.display(description=f"last {RECENT} executions")
    def recent_executions(self, obj: Schedule) -> SafeString:
        rows = Execution.objects.filter(schedule=obj).order_by("-created_at").only(
            "id", "status", "created_at"
        )[:RECENT]
        if not rows:
            return format_html("{}", self.get_empty_value_display())
        return format_html_join(
            "", '<div><a href="{}">{}</a> {} · {}</div>',
            (
                (reverse("admin:executions_execution_change", args=[row.pk]), str(row.pk)[:8],
                 row.status, row.created_at.strftime("%Y-%m-%d %H:%M:%S"))
                for row in rows
            ),
        )

    @admin.display(description=f"last {RECENT} firings")
    def recent_firings(self, obj: Schedule) -> SafeString:
        rows = ScheduleFiring.objects.filter(schedule=obj).order_by("-fired_at")[:RECENT]
        if not rows:
            return format_html("{}", self.get_empty_value_display())
        return format_html_join(
            "", "<div>{} ({}, fired {}): {} {}</div>",
            (
                (row.scheduled_for.strftime("%Y-%m-%d %H:%M:%S"), row.trigger,
                 row.fired_at.strftime("%H:%M:%S"), row.outcome, row.error)
                for row in rows
            ),
        )

    @admin.action(description="Enable selected schedules", permissions=["operate"])
    def enable_selected(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        changed = sum(schedule_set_enabled(schedule=row, enabled=True) for row in queryset)
        self.message_user(request, f"Enabled {_count(changed)}.", messages.SUCCESS)

    @admin.action(description="Disable selected schedules", permissions=["operate"])
    def disable_selected(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        changed = sum(schedule_set_enabled(schedule=row, enabled=False) for row in queryset)
        self.message_user(request, f"Disabled {_count(changed)}.", messages.SUCCESS)

    @admin.action(description="Run selected schedules now", permissions=["operate"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        started, problems = 0, []
        for schedule in queryset.select_related("owner"):
            try:
                schedule_trigger(schedule=schedule)
            except ValidationError as exc:
                problems.append(f"{str(schedule.pk)[:8]}: {'; '.join(validation_messages(exc.detail))}")
            except APIException as exc:  # the owner's active cap
                problems.append(f"{str(schedule.pk)[:8]}: {exc.detail}")
            else:
                started += 1
        self.message_user(
            request, f"Started {_count(started, 'execution')}.",
            messages.SUCCESS if started else messages.WARNING,
        )
        for problem in problems:
            self.message_user(request, f"Not started: {problem}", messages.ERROR)
