from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from executions.pagination import page_params
from executions.serializers import ErrorResponseSerializer, ExecutionCreatedSerializer
from project.api.throttling import CreateRateThrottle
from schedules import services
from schedules.filters import ScheduleFilter
from schedules.models import Schedule
from schedules.selectors import schedules_visible_to
from schedules.serializers import (
    ScheduleCreateSerializer,
    SchedulePageSerializer,
    ScheduleSerializer,
    ScheduleUpdateSerializer,
)

ERRORS_401 = {401: ErrorResponseSerializer}
ERRORS_404 = {404: ErrorResponseSerializer}


class ScheduleViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = ScheduleSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = ScheduleFilter

    queryset = Schedule.objects.none()  # for schema generation only
    # Named apart from the executions' {pk}: the docs and the id-route tests tell them apart.
    lookup_url_kwarg = "schedule_id"

    throttle_scope = "create"

    def get_throttles(self):
        # What starts work (a new schedule, a manual run) is throttled; reads and edits are not.
        return [CreateRateThrottle()] if self.action in ("create", "trigger") else []

    def get_queryset(self):
        return schedules_visible_to(self.request.user)

    def get_object(self) -> Schedule:
        # A malformed id is just an id nobody owns: 404, like another user's.
        try:
            return get_object_or_404(self.get_queryset(), pk=self.kwargs["schedule_id"])
        except DjangoValidationError:
            raise NotFound() from None

    @extend_schema(
        parameters=[
            OpenApiParameter("page", OpenApiTypes.INT, description="Page number, from 1."),
            OpenApiParameter("page_size", OpenApiTypes.INT, description="1 to 100, default 20."),
        ],
        responses={200: SchedulePageSerializer, 400: ErrorResponseSerializer, **ERRORS_401},
    )
    def list(self, request: Request) -> Response:
        page, page_size = page_params(request)
        queryset = self.filter_queryset(self.get_queryset())
        count = queryset.count()
        start = (page - 1) * page_size
        rows = list(queryset[start : start + page_size]) if start < count else []
        return Response(
            {
                "count": count,
                "page": page,
                "page_size": page_size,
                "schedules": ScheduleSerializer(rows, many=True, context={"request": request}).data,
            }
        )

    @extend_schema(
        request=ScheduleCreateSerializer,
        responses={
            201: ScheduleSerializer, 400: ErrorResponseSerializer, 413: ErrorResponseSerializer,
            429: ErrorResponseSerializer, **ERRORS_401,
        },
    )
    def create(self, request: Request) -> Response:
        params = ScheduleCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = dict(params.validated_data)
        schedule = services.schedule_create(
            owner=request.user, timezone_name=data.pop("timezone"), **data
        )
        body = ScheduleSerializer(schedule, context={"request": request}).data
        location = request.build_absolute_uri(f"{request.path.rstrip('/')}/{schedule.pk}")
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})

    @extend_schema(responses={200: ScheduleSerializer, **ERRORS_401, **ERRORS_404})
    def retrieve(self, request: Request, *args, **kwargs) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        request=ScheduleUpdateSerializer,
        responses={200: ScheduleSerializer, 400: ErrorResponseSerializer, **ERRORS_401, **ERRORS_404},
    )
    def partial_update(self, request: Request, schedule_id: str | None = None) -> Response:
        schedule = self.get_object()
        params = ScheduleUpdateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        schedule = services.schedule_update(schedule=schedule, changes=dict(params.validated_data))
        return Response(ScheduleSerializer(schedule, context={"request": request}).data)

    @extend_schema(responses={204: None, **ERRORS_401, **ERRORS_404})
    def destroy(self, request: Request, schedule_id: str | None = None) -> Response:
        """Delete the schedule. The executions it started stay (their schedule_id becomes null)."""
        services.schedule_delete(schedule=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=None,
        responses={
            201: ExecutionCreatedSerializer, 400: ErrorResponseSerializer, 429: ErrorResponseSerializer,
            **ERRORS_401, **ERRORS_404,
        },
    )
    @action(detail=True, methods=["post"])
    def trigger(self, request: Request, schedule_id: str | None = None) -> Response:
        """Start one execution of the schedule now, whatever its cron, enabled and overlap."""
        execution = services.schedule_trigger(schedule=self.get_object())
        body = ExecutionCreatedSerializer(execution, context={"request": request}).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["status_url"]})
