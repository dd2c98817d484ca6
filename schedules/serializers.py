from django.urls import reverse
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from executions.models import ExecutionType
from schedules.models import Schedule, ScheduleOverlap


class _RefusesUnknownFields(serializers.Serializer):
    """A key the API does not know is a 400: a misspelt ``enabeld`` must not pass unnoticed."""

    def validate(self, attrs: dict) -> dict:
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return attrs


class ScheduleCreateSerializer(_RefusesUnknownFields):
    type = serializers.ChoiceField(choices=ExecutionType.choices)
    target_id = serializers.CharField(max_length=200)
    inputs = serializers.DictField(required=False, default=dict)
    config = serializers.DictField(required=False, default=dict)
    cron = serializers.CharField(
        max_length=200,
        help_text="5 fields, minute hour day-of-month month day-of-week ('*/5 * * * *'), "
        "or @hourly, @daily, @weekly, @monthly, @yearly.",
    )
    timezone = serializers.CharField(
        required=False, default="UTC", max_length=64,
        help_text="IANA time zone the cron is read in, e.g. Europe/Paris. Default UTC.",
    )
    enabled = serializers.BooleanField(required=False, default=True)
    overlap = serializers.ChoiceField(
        choices=ScheduleOverlap.choices, required=False, default=ScheduleOverlap.SKIP,
        help_text="While its previous execution is pending or running, a fire time is skipped "
        "(skip) or waits for it to end (queue).",
    )
    webhook = serializers.CharField(
        required=False, max_length=2048, allow_blank=True,
        help_text="Given to every execution the schedule starts: POSTed to when it ends.",
    )


class ScheduleUpdateSerializer(_RefusesUnknownFields):
    """A PATCH: only the fields sent change. Checked again by the service as a whole."""

    type = serializers.ChoiceField(choices=ExecutionType.choices, required=False)
    target_id = serializers.CharField(max_length=200, required=False)
    inputs = serializers.DictField(required=False)
    config = serializers.DictField(required=False)
    cron = serializers.CharField(max_length=200, required=False)
    timezone = serializers.CharField(max_length=64, required=False)
    enabled = serializers.BooleanField(required=False)
    overlap = serializers.ChoiceField(choices=ScheduleOverlap.choices, required=False)
    webhook = serializers.CharField(max_length=2048, allow_blank=True, required=False)


class ScheduleSerializer(serializers.ModelSerializer):
    schedule_id = serializers.UUIDField(source="id")
    webhook = serializers.SerializerMethodField()
    executions_url = serializers.SerializerMethodField()

    class Meta:
        model = Schedule
        fields = [
            "schedule_id",
            "type",
            "target_id",
            "inputs",
            "config",
            "cron",
            "timezone",
            "enabled",
            "overlap",
            "webhook",
            "next_run_at",
            "last_run_at",
            "created_at",
            "updated_at",
            "executions_url",
        ]

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_webhook(self, schedule: Schedule) -> str | None:
        return schedule.webhook or None

    @extend_schema_field(serializers.URLField())
    def get_executions_url(self, schedule: Schedule) -> str:
        """The executions it started: the executions list filtered by ``schedule_id``."""
        path = f"{reverse('executions:execution-list')}?schedule_id={schedule.pk}"
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


# The list answers one page object, not the bare array drf-spectacular assumes for list views.
@extend_schema_serializer(many=False)
class SchedulePageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    schedules = ScheduleSerializer(many=True)
