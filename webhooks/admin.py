from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from webhooks.delivery import webhook_redeliver
from webhooks.models import WebhookAttempt, WebhookMessage


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = readonly_fields = ("number", "started_at", "duration_ms", "status_code", "error", "response")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(WebhookMessage)
class WebhookMessageAdmin(admin.ModelAdmin):
    list_display = [
        "event_type", "source", "source_id", "url", "status", "attempts", "next_attempt_at",
        "created_at", "delivered_at",
    ]
    list_filter = ["status", "source", "event_type"]
    search_fields = ["=source_id", "url"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "id", "source", "source_id", "url", "event_type", "payload", "allow_loopback", "status",
        "attempts", "max_attempts", "next_attempt_at", "created_at", "delivered_at",
    ]
    inlines = [WebhookAttemptInline]
    actions = ["redeliver"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Redeliver selected webhooks")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookMessage]) -> None:
        count = 0
        for message in queryset:
            webhook_redeliver(message=message)
            count += 1
        self.message_user(
            request, f"{count} webhook{'s' if count != 1 else ''} queued for redelivery.",
            messages.SUCCESS,
        )
