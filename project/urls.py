from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from operations import health, landing, metrics

# Every app's admin.py, here rather than at start-up (operations.apps.OperationsAdminConfig):
# management commands that never load the URLconf start without them.
admin.autodiscover()

urlpatterns = [
    path("", landing.landing, name="landing"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # Before runs.urls: the Agent Server's GET /metrics, in both of its formats.
    path("metrics", metrics.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("executions.urls")),
    path("api/v1/", include("schedules.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    # The Agent Server's GET /docs: the same Swagger UI, where the real server has its own.
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # The LangGraph Agent Server API lives at the root, where langgraph-sdk expects it.
    path("", include("runs.urls")),
]

handler404 = "project.api.errors.not_found"
handler500 = "project.api.errors.server_error"
