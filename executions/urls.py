from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from executions.streams import execution_events
from executions.views import ExecutionViewSet, TargetListView

app_name = "executions"

router = SimpleRouter()
# Clients write both `/executions` and `/executions/`; neither should get a redirect.
router.trailing_slash = "/?"
router.register("executions", ExecutionViewSet, basename="execution")

urlpatterns = [
    path("targets", TargetListView.as_view(), name="target-list"),
    # Django takes async views; the stubs' re_path() does not say so.
    re_path(r"^executions/(?P<pk>[^/]+)/events/?$", execution_events, name="execution-events"),  # type: ignore[arg-type]
    *router.urls,
]
