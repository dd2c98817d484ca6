from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


class PageParamsSerializer(serializers.Serializer):
    page = serializers.IntegerField(min_value=1, default=1)
    page_size = serializers.IntegerField(min_value=1, max_value=MAX_PAGE_SIZE, default=DEFAULT_PAGE_SIZE)


def page_params(request: Request) -> tuple[int, int]:
    """``page`` and ``page_size`` from the query string; out of range is a 400, not clamped."""
    params = PageParamsSerializer(data=request.query_params)
    if not params.is_valid():
        raise ValidationError(params.errors)
    return params.validated_data["page"], params.validated_data["page_size"]
