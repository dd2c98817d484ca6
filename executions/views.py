from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from executions import selectors, services
from executions.filters import ExecutionFilter
from executions.models import Execution
from executions.pagination import (
    EXACT_COUNT_LIMIT,
    MAX_OFFSET,
    count_bounded,
    cursor_ordering,
    cursor_page,
    page_params,
)
from executions.serializers import (
    ErrorResponseSerializer,
    ExecutionBatchCreatedSerializer,
    ExecutionBatchCreateSerializer,
    ExecutionCreatedSerializer,
    ExecutionCreateSerializer,
    ExecutionPageSerializer,
    ExecutionSerializer,
    TargetListSerializer,
)
from project.api.idempotency import Idempotency
from project.api.throttling import CreateRateThrottle
from webhooks.models import WebhookSource
from webhooks.selectors import webhook_messages_of
from webhooks.serializers import WebhookListSerializer, WebhookMessageSerializer

ERRORS_401 = {401: ErrorResponseSerializer}
ERRORS_404 = {404: ErrorResponseSerializer}


class ExecutionViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = ExecutionSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = ExecutionFilter

    queryset = Execution.objects.none()  # for schema generation only

    throttle_scope = "create"

    def get_throttles(self):
        # Only starting work is throttled; reads and cancels stay free.
        return [CreateRateThrottle()] if self.action in ("create", "batch") else []

    def get_queryset(self):
        return selectors.executions_visible_to(self.request.user)

    def get_object(self) -> Execution:
        # A malformed id is just an id nobody owns: 404, like another user's.
        try:
            return get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])
        except DjangoValidationError:
            raise NotFound() from None

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "cursor", OpenApiTypes.STR,
                description="Cursor pagination, the recommended mode: empty for the first page, "
                "then the `next` / `previous` links. Each page costs the same however deep; "
                "ordering by created_at or -created_at (default) only.",
            ),
            OpenApiParameter(
                "page", OpenApiTypes.INT,
                description=f"Page number, from 1 (without `cursor`). Pages reach the first "
                f"{MAX_OFFSET:,} rows; `count` is exact up to {EXACT_COUNT_LIMIT:,} rows and an "
                "estimate above (`count_is_estimate: true`).",
            ),
            OpenApiParameter("page_size", OpenApiTypes.INT, description="1 to 100, default 20."),
        ],
        responses={200: ExecutionPageSerializer, 400: ErrorResponseSerializer, **ERRORS_401},
    )
    def list(self, request: Request) -> Response:
        queryset = self.filter_queryset(self.get_queryset())
        if "cursor" in request.query_params:
            if "page" in request.query_params:
                raise ValidationError({"page": ["`page` and `cursor` exclude each other."]})
            _, page_size = page_params(request)
            rows, next_url, previous_url = cursor_page(
                request, queryset, ordering=cursor_ordering(request), page_size=page_size
            )
            body: dict[str, Any] = {"next": next_url, "previous": previous_url, "page_size": page_size}
        else:
            page, page_size = page_params(request)
            count, estimated = count_bounded(queryset)
            start = (page - 1) * page_size
            rows = list(queryset[start : start + page_size])
            body = {"count": count, "count_is_estimate": estimated, "page": page, "page_size": page_size}
        body["executions"] = ExecutionSerializer(rows, many=True, context={"request": request}).data
        return Response(body)

    @extend_schema(
        request=ExecutionCreateSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER,
                description="Retrying the same request with the same key returns the execution the "
                "first one created (header Idempotent-Replayed: true) instead of starting another; "
                "the same key with another request (method, path or body) is a 409.",
            )
        ],
        responses={
            201: ExecutionCreatedSerializer, 400: ErrorResponseSerializer, 409: ErrorResponseSerializer,
            413: ErrorResponseSerializer, 429: ErrorResponseSerializer, **ERRORS_401,
        },
    )
    def create(self, request: Request) -> Response:
        params = ExecutionCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        headers = {}
        idempotency = Idempotency.from_header(
            request.headers.get("Idempotency-Key"), method="POST", path=request.path, body=request.data
        )
        if idempotency is not None:
            execution, created = services.execution_create_idempotent(
                owner=request.user, idempotency=idempotency, **params.validated_data
            )
            headers["Idempotent-Replayed"] = "false" if created else "true"
        else:
            execution = services.execution_create(owner=request.user, **params.validated_data)
        body = ExecutionCreatedSerializer(execution, context={"request": request}).data
        headers["Location"] = body["status_url"]
        return Response(body, status=status.HTTP_201_CREATED, headers=headers)

    @extend_schema(
        request=ExecutionBatchCreateSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER,
                description="Retrying the same batch with the same key returns the executions the "
                "first one created (header Idempotent-Replayed: true); another batch with the same "
                "key is a 409.",
            )
        ],
        responses={
            201: ExecutionBatchCreatedSerializer, 400: ErrorResponseSerializer,
            409: ErrorResponseSerializer, 413: ErrorResponseSerializer,
            429: ErrorResponseSerializer, **ERRORS_401,
        },
    )
    @action(detail=False, methods=["post"])
    def batch(self, request: Request) -> Response:
        """Create up to 100 executions at once, all or none; an item's depends_on may name an
        earlier item as "$N"."""
        params = ExecutionBatchCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        idempotency = Idempotency.from_header(
            request.headers.get("Idempotency-Key"), method="POST", path=request.path, body=request.data
        )
        executions, created = services.executions_create_batch(
            owner=request.user, items=params.validated_items(), idempotency=idempotency
        )
        headers = {}
        if idempotency is not None:
            headers["Idempotent-Replayed"] = "false" if created else "true"
        body = {
            "executions": ExecutionCreatedSerializer(
                executions, many=True, context={"request": request}
            ).data
        }
        return Response(body, status=status.HTTP_201_CREATED, headers=headers)

    @extend_schema(responses={200: ExecutionSerializer, **ERRORS_401, **ERRORS_404})
    def retrieve(self, request: Request, *args, **kwargs) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        request=None,
        responses={200: ExecutionSerializer, 409: ErrorResponseSerializer, **ERRORS_401, **ERRORS_404},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        execution = services.execution_cancel(execution=self.get_object())
        return Response(ExecutionSerializer(execution, context={"request": request}).data)

    @extend_schema(responses={200: WebhookListSerializer, **ERRORS_401, **ERRORS_404})
    @action(detail=True, methods=["get"])
    def webhooks(self, request: Request, pk: str | None = None) -> Response:
        """The execution's webhook and every attempt to deliver it (empty without a webhook)."""
        execution = self.get_object()
        messages = webhook_messages_of(source=WebhookSource.EXECUTION, source_id=execution.pk)
        return Response({"webhooks": WebhookMessageSerializer(messages, many=True).data})


class TargetListView(APIView):
    @extend_schema(responses={200: TargetListSerializer, **ERRORS_401})
    def get(self, request: Request) -> Response:
        return Response({"targets": selectors.targets_described()})
