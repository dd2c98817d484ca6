"""Routes of the LangGraph Agent Server API, at the server root where langgraph-sdk expects them.

A router per resource, as the executions API; the run streams (async views, not DRF) are routed
before it, so ``runs/stream`` is not taken for a run id. Ids are matched as plain strings so a
malformed one gets the real server's 422, not a 404. No trailing slash, as on the real server.
"""

from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from runs import a2a, mcp, protocol_events, store_views, streams, views

app_name = "runs"

router = SimpleRouter(trailing_slash=False)
router.register("", views.SystemViewSet, basename="system")
router.register("assistants", views.AssistantViewSet, basename="assistant")
router.register("threads", views.ThreadViewSet, basename="thread")
# Before the thread's runs and the stateless runs, whose run ids and actions would take "crons".
router.register(
    f"threads/(?P<thread_id>{views.ID_PATTERN})/runs/crons", views.ThreadCronViewSet, basename="thread-cron"
)
router.register("runs/crons", views.CronViewSet, basename="cron")
router.register(
    f"threads/(?P<thread_id>{views.ID_PATTERN})/runs", views.ThreadRunViewSet, basename="thread-run"
)
router.register("runs", views.StatelessRunViewSet, basename="run")
router.register("store", store_views.StoreViewSet, basename="store")

# Django takes async views; the stubs' path() does not say so, hence the ignores.
urlpatterns = [
    path("threads/<str:thread_id>/stream", streams.thread_stream, name="thread-stream"),  # type: ignore[arg-type]
    path(
        "threads/<str:thread_id>/stream/events", protocol_events.thread_protocol_events, name="thread-protocol-events"  # type: ignore[arg-type]
    ),
    path("threads/<str:thread_id>/runs/stream", streams.thread_run_stream, name="thread-run-stream"),  # type: ignore[arg-type]
    path(
        "threads/<str:thread_id>/runs/<str:run_id>/stream", streams.run_join_stream, name="run-join-stream"  # type: ignore[arg-type]
    ),
    path("runs/stream", streams.stateless_run_stream, name="run-stream"),  # type: ignore[arg-type]
    # /mcp/ as the spec writes it, and /mcp.
    re_path(r"^mcp/?$", mcp.mcp_endpoint, name="mcp"),
    path("a2a/<str:assistant_id>", a2a.a2a_endpoint, name="a2a"),
    path("a2a/<str:assistant_id>/.well-known/agent-card.json", a2a.agent_card_view, name="a2a-agent-card"),
    path(".well-known/agent-card.json", a2a.agent_card_view, name="agent-card"),
    *router.urls,
]
