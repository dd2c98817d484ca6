from django.urls import reverse
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from executions.models import PRIORITY_MAX, PRIORITY_MIN, Execution, ExecutionStatus, ExecutionType
from project.api.errors import InvalidInput
from webhooks.destinations import WebhookUrlInvalid, webhook_url_check


class ExecutionCreateSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=ExecutionType.choices)
    target_id = serializers.CharField(max_length=200)
    inputs = serializers.DictField(required=False, default=dict)
    config = serializers.DictField(required=False, default=dict)
    priority = serializers.IntegerField(
        required=False, min_value=PRIORITY_MIN, max_value=PRIORITY_MAX,
        help_text="-10 to 10, default 0: a worker claims the pending execution with the highest "
        "priority first, the oldest first within a priority.",
    )
    depends_on = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=50,
        help_text="Ids of your executions that must complete first (at most 50); in a batch, "
        "\"$N\" names the batch's item N (an earlier one). It waits pending, blocked_by the "
        "unfinished ones, and gets their outputs as ctx.dependencies; if one fails or is "
        "cancelled, it fails (or is cancelled) with error.type DependencyFailed.",
    )
    webhook = serializers.CharField(
        required=False, max_length=2048,
        help_text="http(s) URL POSTed to when the execution ends: {type: execution.completed|"
        "failed|cancelled, timestamp, data: the execution}, signed per Standard Webhooks.",
    )

    def validate_webhook(self, value: str) -> str:
        try:
            return webhook_url_check(value)
        except WebhookUrlInvalid as exc:
            raise serializers.ValidationError(str(exc)) from None


class ExecutionBatchCreateSerializer(serializers.Serializer):
    executions = serializers.ListField(
        child=serializers.DictField(), min_length=1, max_length=100,
        help_text="1 to 100 create bodies, created all or none.",
    )

    def validated_items(self) -> list[dict]:
        """Each item checked as a create body; the first bad one is a 400 naming its index."""
        validated = []
        for index, item in enumerate(self.validated_data["executions"]):
            body = ExecutionCreateSerializer(data=item)
            if not body.is_valid():
                raise InvalidInput({f"executions[{index}]": body.errors})
            validated.append(body.validated_data)
        return validated


class ProgressSerializer(serializers.Serializer):
    current_step = serializers.IntegerField()
    total_steps = serializers.IntegerField(allow_null=True)
    step_name = serializers.CharField(allow_blank=True)
    percentage = serializers.FloatField()


class ErrorSerializer(serializers.Serializer):
    type = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField()


def status_url(request, execution: Execution) -> str:
    path = reverse("executions:execution-detail", kwargs={"pk": execution.pk})
    return request.build_absolute_uri(path) if request is not None else path


class ExecutionCreatedSerializer(serializers.ModelSerializer):
    execution_id = serializers.UUIDField(source="id")
    status = serializers.ChoiceField(choices=ExecutionStatus.choices)
    status_url = serializers.SerializerMethodField()

    class Meta:
        model = Execution
        fields = ["execution_id", "status", "status_url", "created_at"]

    def get_status_url(self, execution: Execution) -> str:
        return status_url(self.context.get("request"), execution)


class ExecutionSerializer(serializers.ModelSerializer):
    execution_id = serializers.UUIDField(source="id")
    progress = serializers.SerializerMethodField()
    outputs = serializers.JSONField(allow_null=True)
    error = serializers.SerializerMethodField()
    status_url = serializers.SerializerMethodField()
    webhook = serializers.SerializerMethodField()
    schedule_id = serializers.UUIDField(
        allow_null=True, read_only=True, help_text="The schedule whose firing started it, if any."
    )
    depends_on = serializers.SerializerMethodField()
    blocked_by = serializers.SerializerMethodField()

    class Meta:
        model = Execution
        fields = [
            "execution_id",
            "status",
            "type",
            "target_id",
            "inputs",
            "config",
            "priority",
            "depends_on",
            "blocked_by",
            "created_at",
            "started_at",
            "completed_at",
            "cancelled_at",
            "progress",
            "outputs",
            "error",
            "attempts",
            "retry_of",
            "schedule_id",
            "webhook",
            "status_url",
        ]

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, execution: Execution) -> dict:
        return {
            "current_step": execution.current_step,
            "total_steps": execution.total_steps,
            "step_name": execution.step_name,
            "percentage": execution.percentage,
        }

    @extend_schema_field(ErrorSerializer(allow_null=True))
    def get_error(self, execution: Execution) -> dict | None:
        return execution.error

    def get_status_url(self, execution: Execution) -> str:
        return status_url(self.context.get("request"), execution)

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_depends_on(self, execution: Execution) -> list[str]:
        return [str(link.upstream_id) for link in execution.upstream_links.all()]

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_blocked_by(self, execution: Execution) -> list[str]:
        """The dependencies it still waits for (empty once it may run, or ended)."""
        if execution.status != ExecutionStatus.PENDING:
            return []
        return [
            str(link.upstream_id) for link in execution.upstream_links.all()
            if link.upstream.status != ExecutionStatus.COMPLETED
        ]

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_webhook(self, execution: Execution) -> str | None:
        return execution.webhook or None


# The list answers one page object, not the bare array drf-spectacular assumes for list views.
@extend_schema_serializer(many=False)
class ExecutionBatchCreatedSerializer(serializers.Serializer):
    executions = ExecutionCreatedSerializer(many=True)


# The list action answers one page object, not a list of them (drf-spectacular wraps a list
# action's serializer in an array unless told).
@extend_schema_serializer(many=False)
class ExecutionPageSerializer(serializers.Serializer):
    count = serializers.IntegerField(
        required=False, help_text="Page-number mode: the matching rows, exact up to 10,000."
    )
    count_is_estimate = serializers.BooleanField(
        required=False, help_text="Page-number mode: true when `count` is PostgreSQL's estimate."
    )
    page = serializers.IntegerField(required=False, help_text="Page-number mode only.")
    next = serializers.URLField(allow_null=True, required=False, help_text="Cursor mode: the next page.")
    previous = serializers.URLField(
        allow_null=True, required=False, help_text="Cursor mode: the previous page."
    )
    page_size = serializers.IntegerField()
    executions = ExecutionSerializer(many=True)


class TargetInputSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.CharField()
    # A declared field named like Field.required, which only the stubs mind.
    required = serializers.BooleanField()  # type: ignore[assignment]
    default = serializers.JSONField(allow_null=True)
    description = serializers.CharField(allow_blank=True)


class RetryPolicySerializer(serializers.Serializer):
    max_attempts = serializers.IntegerField(help_text="Tries in all; config.max_attempts overrides.")
    retry_backoff = serializers.FloatField(
        help_text="Seconds before the first retry, doubling; config.retry_backoff overrides."
    )
    retry_on = serializers.ListField(
        child=serializers.CharField(), allow_null=True,
        help_text="The error types retried; null: every failure.",
    )


class TargetSerializer(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.ChoiceField(choices=ExecutionType.choices)
    description = serializers.CharField(allow_blank=True)
    steps = serializers.ListField(child=serializers.CharField(), allow_null=True)
    inputs = TargetInputSerializer(many=True)
    concurrency = serializers.IntegerField(
        allow_null=True,
        help_text="At most this many of its executions run at once; the rest wait pending. "
        "null: no limit.",
    )
    retry = RetryPolicySerializer()


class TargetListSerializer(serializers.Serializer):
    targets = TargetSerializer(many=True)


class ErrorResponseSerializer(serializers.Serializer):
    detail = serializers.CharField()
    # A declared field named like Serializer.errors, which only the stubs mind.
    errors = serializers.DictField(required=False)  # type: ignore[assignment]
