from rest_framework import serializers

from webhooks.models import WebhookAttempt, WebhookMessage


class WebhookAttemptSerializer(serializers.ModelSerializer):
    attempt = serializers.IntegerField(source="number")

    class Meta:
        model = WebhookAttempt
        fields = ["attempt", "started_at", "duration_ms", "status_code", "error", "response"]


class WebhookMessageSerializer(serializers.ModelSerializer):
    webhook_id = serializers.CharField(read_only=True)
    type = serializers.CharField(source="event_type")
    deliveries = WebhookAttemptSerializer(many=True)

    class Meta:
        model = WebhookMessage
        fields = [
            "webhook_id", "url", "type", "status", "attempts", "max_attempts", "next_attempt_at",
            "created_at", "delivered_at", "deliveries",
        ]


class WebhookListSerializer(serializers.Serializer):
    webhooks = WebhookMessageSerializer(many=True)
