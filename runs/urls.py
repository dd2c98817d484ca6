"""Routes of the LangGraph Agent Server API, at the server root where langgraph-sdk expects them.

Ids are matched as plain strings so a malformed one gets the real server's 422, not a 404.
"""

from django.urls import path

from runs import streams, views

app_name = "runs"

urlpatterns = [
    path("ok", views.OkView.as_view(), name="ok"),
    path("info", views.InfoView.as_view(), name="info"),
    # assistants
    path("assistants", views.AssistantsView.as_view(), name="assistants"),
    path("assistants/search", views.AssistantSearchView.as_view(), name="assistant-search"),
    path("assistants/count", views.AssistantCountView.as_view(), name="assistant-count"),
    path("assistants/<str:assistant_id>", views.AssistantDetailView.as_view(), name="assistant"),
    path("assistants/<str:assistant_id>/graph", views.AssistantGraphView.as_view(), name="assistant-graph"),
    path("assistants/<str:assistant_id>/schemas", views.AssistantSchemasView.as_view(), name="assistant-schemas"),
    path("assistants/<str:assistant_id>/subgraphs", views.AssistantSubgraphsView.as_view(), name="assistant-subgraphs"),
    path(
        "assistants/<str:assistant_id>/subgraphs/<str:namespace>",
        views.AssistantSubgraphsView.as_view(),
        name="assistant-subgraphs-namespace",
    ),
    path("assistants/<str:assistant_id>/versions", views.AssistantVersionsView.as_view(), name="assistant-versions"),
    path("assistants/<str:assistant_id>/latest", views.AssistantLatestView.as_view(), name="assistant-latest"),
    # threads
    path("threads", views.ThreadsView.as_view(), name="threads"),
    path("threads/search", views.ThreadSearchView.as_view(), name="thread-search"),
    path("threads/count", views.ThreadCountView.as_view(), name="thread-count"),
    path("threads/prune", views.ThreadPruneView.as_view(), name="thread-prune"),
    path("threads/<str:thread_id>", views.ThreadDetailView.as_view(), name="thread"),
    path("threads/<str:thread_id>/copy", views.ThreadCopyView.as_view(), name="thread-copy"),
    path("threads/<str:thread_id>/state", views.ThreadStateView.as_view(), name="thread-state"),
    path(
        "threads/<str:thread_id>/state/checkpoint",
        views.ThreadStateAtCheckpointView.as_view(),
        name="thread-state-checkpoint",
    ),
    path(
        "threads/<str:thread_id>/state/<str:checkpoint_id>",
        views.ThreadStateAtView.as_view(),
        name="thread-state-at",
    ),
    path("threads/<str:thread_id>/history", views.ThreadHistoryView.as_view(), name="thread-history"),
    path("threads/<str:thread_id>/stream", streams.thread_stream, name="thread-stream"),
    # runs on a thread
    path("threads/<str:thread_id>/runs", views.ThreadRunsView.as_view(), name="thread-runs"),
    path("threads/<str:thread_id>/runs/wait", views.ThreadRunWaitView.as_view(), name="thread-run-wait"),
    path("threads/<str:thread_id>/runs/stream", streams.thread_run_stream, name="thread-run-stream"),
    path("threads/<str:thread_id>/runs/<str:run_id>", views.RunDetailView.as_view(), name="run"),
    path("threads/<str:thread_id>/runs/<str:run_id>/join", views.RunJoinView.as_view(), name="run-join"),
    path(
        "threads/<str:thread_id>/runs/<str:run_id>/stream", streams.run_join_stream, name="run-join-stream"
    ),
    path("threads/<str:thread_id>/runs/<str:run_id>/cancel", views.RunCancelView.as_view(), name="run-cancel"),
    # stateless runs
    path("runs", views.StatelessRunsView.as_view(), name="runs"),
    path("runs/wait", views.StatelessRunWaitView.as_view(), name="run-wait"),
    path("runs/stream", streams.stateless_run_stream, name="run-stream"),
    path("runs/batch", views.RunBatchView.as_view(), name="run-batch"),
    path("runs/cancel", views.RunsCancelView.as_view(), name="runs-cancel"),
]
