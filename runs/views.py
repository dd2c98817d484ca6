"""The LangGraph Agent Server API: assistants, threads and their state, runs, system routes.

One viewset per resource, routed by ``runs.urls``; the run streams are async views beside them
(``runs.streams``). Thin actions: parse the JSON body (whatever the content type), check it
against the API's schema, call one service, render with ``runs.serializers``. Every error is
``{"detail": "..."}``, as on the real server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import metadata as package_metadata
from typing import Any, TypeVar

from django.conf import settings
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from project.api.errors import langgraph_exception_handler
from project.api.throttling import CreateRateThrottle
from project.booleans import parse_bool
from runs import services
from runs.errors import LangGraphError, NotFound, Unprocessable
from runs.graphs import checkpointer, graph_get
from runs.jsonable import to_json
from runs.models import CancelAction, DiscardedRun, Run, RunStatus
from runs.protocol_commands import error_body, protocol_command
from runs.selectors import cron_get, crons_search
from runs.serializers import (
    ASSISTANT_FIELDS,
    CRON_FIELDS,
    RUN_FIELDS,
    THREAD_FIELDS,
    assistant_json,
    assistant_version_json,
    check_select,
    cron_json,
    run_json,
    thread_json,
)
from runs.services.crons import cron_create, cron_delete, cron_update
from runs.services.waiting import run_create_awaited, run_result_chunks
from runs.validation import parse_json_body, validate_body

IDEMPOTENT_REPLAYED = "Idempotent-Replayed"
COPY_OMITS = frozenset({"values", "error", "interrupts"})
# Ids are matched as plain strings so a malformed one gets the real server's 422 from the
# service that parses it, not a 404 from the resolver.
ID_PATTERN = "[^/]+"


class LangGraphViewSet(viewsets.ViewSet):
    """Base of every runs API viewset: real-server error bodies, lenient JSON bodies, and the
    per-user "create" throttle on the actions that create.

    A ``ViewSet``, not a ``GenericViewSet``: the bodies are the real server's shapes, built by
    ``runs.serializers`` from what the services return, so there is no queryset or serializer
    class to be generic over (and DRF's OPTIONS answer would fail looking for one)."""

    lookup_value_regex = ID_PATTERN
    # The executions API's "create" scope and rate, in the shared cache.
    throttle_scope = "create"
    create_actions: frozenset[str] = frozenset()

    def get_throttles(self) -> list:
        return [CreateRateThrottle()] if self.action in self.create_actions else []

    def get_exception_handler(self) -> Callable[[Exception, dict], Response | None]:
        return langgraph_exception_handler

    def body(self, schema: str | None = None, *, required: bool = True) -> Any:
        """The request's JSON body, validated against the API component ``schema``."""
        return parse_json_body(self.request.body, schema, required=required)

    def idempotency(self, body: Any) -> services.Idempotency | None:
        """The request's ``Idempotency-Key``: a retry answers with what the first request
        created."""
        return services.Idempotency.from_header(
            self.request.headers.get("Idempotency-Key"),
            method=self.request.method or "", path=self.request.path, body=body,
        )


ResponseT = TypeVar("ResponseT", bound=HttpResponseBase)


def _replayed(response: ResponseT, idempotency: Any, created: bool) -> ResponseT:
    if idempotency is not None:
        response[IDEMPOTENT_REPLAYED] = "false" if created else "true"
    return response


def _run_body(run: Run | DiscardedRun) -> dict[str, Any]:
    # A replayed stateless run may be gone with its thread: the API's last view of it remains.
    return run_json(run.as_run() if isinstance(run, DiscardedRun) else run)


def _paginated(items: list, total: int, offset: int, limit: int) -> Response:
    headers = {"X-Pagination-Total": str(total)}
    if offset + limit < total:
        headers["X-Pagination-Next"] = str(offset + limit)
    return Response(items, headers=headers)


def _query_bool(request: Request, name: str, default: bool = False) -> bool:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    return parse_bool(value)


def _query_int(request: Request, name: str, default: int, minimum: int, maximum: int) -> int:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise Unprocessable(f"Invalid {name}: must be an integer") from None
    if not minimum <= number <= maximum:
        raise Unprocessable(f"Invalid {name}: must be between {minimum} and {maximum}")
    return number


def _cancel_action(request: Request) -> str:
    chosen = request.query_params.get("action") or CancelAction.INTERRUPT
    if chosen not in CancelAction.values:
        raise Unprocessable(f"Invalid action: must be one of {list(CancelAction.values)}")
    return chosen


def _run_location_headers(thread_id: Any, run_id: Any) -> dict[str, str]:
    return {
        "Location": f"/threads/{thread_id}/runs/{run_id}/join",
        "Content-Location": f"/threads/{thread_id}/runs/{run_id}",
    }


def result_response(
    *,
    thread_id: Any,
    run_id: Any,
    discard_thread: bool = False,
    initial_delay: float = 0.0,
    cancel_on_disconnect: bool = False,
) -> StreamingHttpResponse:
    """A 200 whose body is the run's final result once it ends
    (``runs.services.waiting.run_result_chunks``: whitespace meanwhile keeps the connection open,
    so the status is sent at once)."""
    chunks = run_result_chunks(
        thread_id=thread_id,
        run_id=run_id,
        discard_thread=discard_thread,
        initial_delay=initial_delay,
        cancel_on_disconnect=cancel_on_disconnect,
    )
    response = StreamingHttpResponse(chunks, content_type="application/json", status=200)
    for key, value in _run_location_headers(thread_id, run_id).items():
        response[key] = value
    return response


# --- system --------------------------------------------------------------------------------------


# Concrete viewsets carry comments, not docstrings: DRF shows a view's docstring to API clients
# (the OPTIONS answer's "description").


class SystemViewSet(LangGraphViewSet):
    # /ok and /info: open to anyone, as on the real server.
    authentication_classes = ()
    permission_classes = (AllowAny,)

    @action(detail=False, methods=["get"])
    def ok(self, request: Request) -> Response:
        return Response({"ok": True})

    @action(detail=False, methods=["get"])
    def info(self, request: Request) -> Response:
        try:
            langgraph_version = package_metadata.version("langgraph")
        except package_metadata.PackageNotFoundError:
            langgraph_version = None
        return Response(
            {
                "version": getattr(settings, "RUNS_API_VERSION", "0.1.0"),
                "langgraph_py_version": langgraph_version,
                "flags": {"assistants": True, "crons": True, "langsmith": False},
                "metadata": {},
            }
        )


# --- assistants ----------------------------------------------------------------------------------


class AssistantViewSet(LangGraphViewSet):
    lookup_field = "assistant_id"
    create_actions = frozenset({"create"})

    def create(self, request: Request) -> Response:
        body = self.body("AssistantCreate")
        idempotency = self.idempotency(body)
        assistant, created = services.assistant_create_idempotent(
            owner=request.user,
            idempotency=idempotency,
            graph_id=body["graph_id"],
            assistant_id=body.get("assistant_id"),
            config=body.get("config"),
            context=body.get("context"),
            metadata=body.get("metadata"),
            name=body.get("name"),
            description=body.get("description"),
            if_exists=body.get("if_exists", "raise"),
        )
        return _replayed(Response(assistant_json(assistant)), idempotency, created)

    @action(detail=False, methods=["post"])
    def search(self, request: Request) -> Response:
        body = self.body("AssistantSearchRequest", required=False)
        select = check_select(body.get("select"), ASSISTANT_FIELDS)
        queryset = services.assistants_search(
            user=request.user,
            metadata=body.get("metadata"),
            graph_id=body.get("graph_id"),
            name=body.get("name"),
            sort_by=body.get("sort_by"),
            sort_order=body.get("sort_order"),
        )
        limit, offset = body.get("limit", 10), body.get("offset", 0)
        total = queryset.count()
        rows = [assistant_json(a, select) for a in queryset[offset : offset + limit]]
        return _paginated(rows, total, offset, limit)

    @action(detail=False, methods=["post"])
    def count(self, request: Request) -> Response:
        body = self.body("AssistantCountRequest", required=False)
        queryset = services.assistants_search(
            user=request.user,
            metadata=body.get("metadata"),
            graph_id=body.get("graph_id"),
            name=body.get("name"),
        )
        return Response(queryset.count())

    def retrieve(self, request: Request, assistant_id: str) -> Response:
        return Response(assistant_json(services.assistant_get(user=request.user, assistant_id=assistant_id)))

    def partial_update(self, request: Request, assistant_id: str) -> Response:
        body = self.body("AssistantPatch", required=False)
        assistant = services.assistant_get(user=request.user, assistant_id=assistant_id)
        assistant = services.assistant_update(
            user=request.user,
            assistant=assistant,
            graph_id=body.get("graph_id"),
            config=body.get("config"),
            context=body.get("context"),
            metadata=body.get("metadata"),
            name=body.get("name"),
            description=body.get("description"),
        )
        return Response(assistant_json(assistant))

    def destroy(self, request: Request, assistant_id: str) -> Response:
        pk = services.parse_uuid(assistant_id, "assistant")
        try:
            assistant = services.assistant_get(user=request.user, assistant_id=pk)
        except NotFound:
            raise NotFound(f"Assistant with ID {pk} not found") from None
        services.assistant_delete(user=request.user, assistant=assistant)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["get"])
    def graph(self, request: Request, assistant_id: str) -> Response:
        assistant = services.assistant_get(user=request.user, assistant_id=assistant_id)
        xray: Any = request.query_params.get("xray", "false")
        xray = int(xray) if xray.isdigit() else parse_bool(xray)
        drawable = graph_get(assistant.graph_id).get_graph(xray=xray)
        return Response(to_json(drawable.to_json()))

    @action(detail=True, methods=["get"])
    def subgraphs(
        self, request: Request, assistant_id: str, namespace: str | None = None
    ) -> Response:
        assistant = services.assistant_get(user=request.user, assistant_id=assistant_id)
        graph = graph_get(assistant.graph_id)
        recurse = _query_bool(request, "recurse")
        subgraphs = {
            ns: to_json(sub.get_input_jsonschema())
            for ns, sub in graph.get_subgraphs(namespace=namespace, recurse=recurse)
        }
        return Response(subgraphs)

    @action(detail=True, methods=["get"], url_path=f"subgraphs/(?P<namespace>{ID_PATTERN})")
    def namespace_subgraphs(self, request: Request, assistant_id: str, namespace: str) -> Response:
        return self.subgraphs(request, assistant_id, namespace)

    @action(detail=True, methods=["get"])
    def schemas(self, request: Request, assistant_id: str) -> Response:
        assistant = services.assistant_get(user=request.user, assistant_id=assistant_id)
        graph = graph_get(assistant.graph_id)

        def schema(getter: Any) -> Any:
            try:
                return to_json(getter())
            except Exception:  # noqa: BLE001  a graph without that schema: the real server answers null
                return None

        return Response(
            {
                "graph_id": assistant.graph_id,
                "input_schema": schema(graph.get_input_jsonschema),
                "output_schema": schema(graph.get_output_jsonschema),
                "state_schema": schema(graph.get_input_jsonschema),
                "config_schema": schema(graph.get_config_jsonschema),
                "context_schema": schema(graph.get_context_jsonschema),
            }
        )

    @action(detail=True, methods=["post"])
    def versions(self, request: Request, assistant_id: str) -> Response:
        body = self.body("AssistantVersionsSearchRequest", required=False)
        assistant = services.assistant_get(user=request.user, assistant_id=assistant_id)
        versions = services.json_filter(assistant.versions.all(), "metadata", body.get("metadata"))
        limit, offset = body.get("limit", 10), body.get("offset", 0)
        return Response(
            [assistant_version_json(v) for v in versions.order_by("-version")[offset : offset + limit]]
        )

    @action(detail=True, methods=["post"])
    def latest(self, request: Request, assistant_id: str) -> Response:
        body = self.body("AssistantVersionChange", required=False)
        version = body.get("version", request.query_params.get("version"))
        if version is None:
            raise Unprocessable('"version" is a required property')
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise Unprocessable("Invalid version: must be an integer") from None
        assistant = services.assistant_get(user=request.user, assistant_id=assistant_id)
        assistant = services.assistant_set_latest(user=request.user, assistant=assistant, version=version)
        return Response(assistant_json(assistant))


# --- threads -------------------------------------------------------------------------------------


class ThreadViewSet(LangGraphViewSet):
    # Threads and their state; GET /threads/{thread_id}/stream is runs.streams.thread_stream.
    lookup_field = "thread_id"
    create_actions = frozenset({"create", "commands"})

    def create(self, request: Request) -> Response:
        body = self.body("ThreadCreate", required=False)
        idempotency = self.idempotency(body)
        thread, created = services.thread_create_idempotent(
            owner=request.user,
            idempotency=idempotency,
            thread_id=body.get("thread_id"),
            metadata=body.get("metadata"),
            if_exists=body.get("if_exists", "raise"),
        )
        return _replayed(Response(thread_json(thread)), idempotency, created)

    @action(detail=False, methods=["post"])
    def search(self, request: Request) -> Response:
        body = self.body("ThreadSearchRequest", required=False)
        select = check_select(body.get("select"), THREAD_FIELDS)
        queryset = services.threads_search(
            user=request.user,
            ids=body.get("ids"),
            metadata=body.get("metadata"),
            values=body.get("values"),
            status=body.get("status"),
            sort_by=body.get("sort_by"),
            sort_order=body.get("sort_order"),
        )
        limit, offset = body.get("limit", 10), body.get("offset", 0)
        total = queryset.count()
        rows = [thread_json(t, select) for t in queryset[offset : offset + limit]]
        return _paginated(rows, total, offset, limit)

    @action(detail=False, methods=["post"])
    def count(self, request: Request) -> Response:
        body = self.body("ThreadCountRequest", required=False)
        queryset = services.threads_search(
            user=request.user,
            metadata=body.get("metadata"),
            values=body.get("values"),
            status=body.get("status"),
        )
        return Response(queryset.count())

    @action(detail=False, methods=["post"])
    def prune(self, request: Request) -> Response:
        body = self.body("ThreadPruneRequest")
        count = services.threads_prune(
            user=request.user, thread_ids=body["thread_ids"], strategy=body.get("strategy", "delete")
        )
        return Response({"pruned_count": count})

    def retrieve(self, request: Request, thread_id: str) -> Response:
        return Response(thread_json(services.thread_get(user=request.user, thread_id=thread_id)))

    def partial_update(self, request: Request, thread_id: str) -> Response:
        body = self.body("ThreadPatch", required=False)
        thread = services.thread_get(user=request.user, thread_id=thread_id, not_found="Not Found")
        return Response(thread_json(services.thread_update(thread=thread, metadata=body.get("metadata"))))

    def destroy(self, request: Request, thread_id: str) -> Response:
        services.thread_delete(thread=services.thread_get(user=request.user, thread_id=thread_id))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"])
    def commands(self, request: Request, thread_id: str) -> Response:
        # The v2 protocol's commands (runs.protocol_commands); their events are
        # runs.protocol_events' POST /threads/{thread_id}/stream/events.
        try:
            envelope = json.loads(request.body or b"null")
        except ValueError:
            return Response(error_body(None, "invalid_argument", "The body must be JSON."), status=400)
        status_code, body = protocol_command(user=request.user, thread_id=thread_id, envelope=envelope)
        return Response(body, status=status_code)

    @action(detail=True, methods=["get"])
    def storage(self, request: Request, thread_id: str) -> Response:
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        # Here, not at the top: checkpoints.saver imports langgraph, a second's import.
        from checkpoints.saver import DjangoCheckpointSaver
        from checkpoints.storage import thread_storage

        saver = checkpointer()
        if not isinstance(saver, DjangoCheckpointSaver):
            raise LangGraphError("Thread storage is measured in the built-in checkpointer only.", 501)
        return Response(thread_storage(thread_id=str(thread.pk), serde=saver.serde))

    @action(detail=True, methods=["post"])
    def copy(self, request: Request, thread_id: str) -> Response:
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        copied = thread_json(services.thread_copy(thread=thread))
        # The real server answers a copy without its values, error and interrupts (they are in the
        # copy's state and on a GET of it).
        return Response({key: value for key, value in copied.items() if key not in COPY_OMITS})

    @action(detail=True, methods=["get"])
    def state(self, request: Request, thread_id: str) -> Response:
        return self._state(request, thread_id, None)

    @state.mapping.post
    def state_update(self, request: Request, thread_id: str) -> Response:
        body = self.body("ThreadStateUpdate", required=False)
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        checkpoint = body.get("checkpoint") or {}
        if body.get("checkpoint_id"):
            checkpoint = {**checkpoint, "checkpoint_id": body["checkpoint_id"]}
        return Response(
            services.thread_state_update(
                thread=thread,
                values=body.get("values"),
                as_node=body.get("as_node"),
                checkpoint=checkpoint or None,
            )
        )

    # The router orders a viewset's extra actions by their names: checkpoint_state
    # (state/checkpoint) must come before past_state (state/{checkpoint_id}), which would take
    # "checkpoint" for an id; a GET of state/checkpoint is a 405, as on the real server.
    @action(detail=True, methods=["post"], url_path="state/checkpoint")
    def checkpoint_state(self, request: Request, thread_id: str) -> Response:
        body = self.body("ThreadStateCheckpointRequest")
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        return Response(
            services.thread_state(
                thread=thread, checkpoint=body["checkpoint"], subgraphs=bool(body.get("subgraphs"))
            )
        )

    @action(detail=True, methods=["get"], url_path=f"state/(?P<checkpoint_id>{ID_PATTERN})")
    def past_state(self, request: Request, thread_id: str, checkpoint_id: str) -> Response:
        """A past state; updates go to ``/state`` (as on the real server)."""
        return self._state(request, thread_id, checkpoint_id)

    def _state(self, request: Request, thread_id: str, checkpoint_id: str | None) -> Response:
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        checkpoint = {"checkpoint_id": checkpoint_id} if checkpoint_id else None
        return Response(
            services.thread_state(
                thread=thread, checkpoint=checkpoint, subgraphs=_query_bool(request, "subgraphs")
            )
        )

    @action(detail=True, methods=["get"])
    def history(self, request: Request, thread_id: str) -> Response:
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        limit = _query_int(request, "limit", 10, 1, 1000)
        before = request.query_params.get("before")
        return Response(
            services.thread_history(
                thread=thread, limit=limit, before={"checkpoint_id": before} if before else None
            )
        )

    @history.mapping.post
    def history_search(self, request: Request, thread_id: str) -> Response:
        body = self.body("ThreadStateSearch", required=False)
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        return Response(
            services.thread_history(
                thread=thread,
                limit=body.get("limit", 10),
                before=body.get("before"),
                metadata=body.get("metadata"),
                checkpoint=body.get("checkpoint"),
            )
        )


# --- runs ----------------------------------------------------------------------------------------


class ThreadRunViewSet(LangGraphViewSet):
    # The runs of a thread; runs/stream and runs/{run_id}/stream are runs.streams'.
    lookup_field = "run_id"
    create_actions = frozenset({"create", "wait"})

    def list(self, request: Request, thread_id: str) -> Response:
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        limit = _query_int(request, "limit", 10, 1, 1000)
        offset = _query_int(request, "offset", 0, 0, 10**9)
        select = check_select(request.query_params.getlist("select"), RUN_FIELDS)
        run_status = request.query_params.get("status") or None
        if run_status and run_status not in RunStatus.values:
            raise Unprocessable(f"Invalid status: must be one of {list(RunStatus.values)}")
        queryset = services.runs_list(thread=thread, status=run_status)
        return Response([run_json(r, select) for r in queryset[offset : offset + limit]])

    def create(self, request: Request, thread_id: str) -> Response:
        body = self.body("RunCreateStateful")
        idempotency = self.idempotency(body)
        run, created = services.run_create_idempotent(
            owner=request.user, body=body, thread_id=thread_id, idempotency=idempotency
        )
        headers = {"Content-Location": f"/threads/{run.thread_id}/runs/{run.pk}"}
        return _replayed(Response(_run_body(run), headers=headers), idempotency, created)

    @action(detail=False, methods=["post"])
    def wait(self, request: Request, thread_id: str) -> HttpResponseBase:
        body = self.body("RunCreateStreamingStateful")
        idempotency = self.idempotency(body)
        run, created, _ = run_create_awaited(
            owner=request.user, body=body, thread_id=thread_id, idempotency=idempotency
        )
        # A replay waits for the first request's run and answers as /join would.
        response = result_response(
            thread_id=run.thread_id,
            run_id=run.pk,
            cancel_on_disconnect=body.get("on_disconnect") == "cancel",
        )
        return _replayed(response, idempotency, created)

    def retrieve(self, request: Request, thread_id: str, run_id: str) -> Response:
        return Response(run_json(services.run_get(user=request.user, thread_id=thread_id, run_id=run_id)))

    def destroy(self, request: Request, thread_id: str, run_id: str) -> Response:
        try:
            run = services.run_get(user=request.user, thread_id=thread_id, run_id=run_id)
        except NotFound:
            raise NotFound("Run not found") from None
        services.run_delete(run=run)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["get"])
    def join(self, request: Request, thread_id: str, run_id: str) -> HttpResponseBase:
        thread_pk = services.parse_uuid(thread_id, "thread")
        run_pk = services.parse_uuid(run_id, "run")
        try:
            services.run_get(user=request.user, thread_id=thread_pk, run_id=run_pk)
        except NotFound:
            # As on the real server: a 200 whose body reports the missing run.
            return result_response(thread_id=thread_pk, run_id=None, initial_delay=0.5)
        return result_response(
            thread_id=thread_pk,
            run_id=run_pk,
            cancel_on_disconnect=_query_bool(request, "cancel_on_disconnect"),
        )

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, thread_id: str, run_id: str) -> HttpResponseBase:
        cancel_action = _cancel_action(request)
        run = services.run_cancel(
            user=request.user, thread_id=thread_id, run_id=run_id, action=cancel_action
        )
        if _query_bool(request, "wait"):
            return result_response(thread_id=run.thread_id, run_id=run.pk)
        return HttpResponse(status=status.HTTP_202_ACCEPTED)


class StatelessRunViewSet(LangGraphViewSet):
    # Runs on a temporary thread, deleted when the run ends (on_completion "delete", the default)
    # or, for /wait, once the response has read the result; runs/stream is
    # runs.streams.stateless_run_stream.
    create_actions = frozenset({"create", "wait", "batch"})

    def create(self, request: Request) -> Response:
        body = self.body("RunCreateStateless")
        idempotency = self.idempotency(body)
        run, created = services.run_create_idempotent(
            owner=request.user, body=body, on_completion=body.get("on_completion", "delete"),
            idempotency=idempotency,
        )
        headers = {"Content-Location": f"/threads/{run.thread_id}/runs/{run.pk}"}
        return _replayed(Response(_run_body(run), headers=headers), idempotency, created)

    @action(detail=False, methods=["post"])
    def wait(self, request: Request) -> HttpResponseBase:
        body = self.body("RunCreateStreamingStateless")
        idempotency = self.idempotency(body)
        run, created, discard_thread = run_create_awaited(
            owner=request.user, body=body, idempotency=idempotency
        )
        if isinstance(run, DiscardedRun):
            # The first request's response has read the result and deleted the thread.
            replayed = Response(run.result, headers=_run_location_headers(run.thread_id, run.pk))
            return _replayed(replayed, idempotency, created)
        response = result_response(
            thread_id=run.thread_id,
            run_id=run.pk,
            discard_thread=discard_thread,
            cancel_on_disconnect=body.get("on_disconnect") == "cancel",
        )
        return _replayed(response, idempotency, created)

    @action(detail=False, methods=["post"])
    def batch(self, request: Request) -> Response:
        bodies = self.body("RunBatchCreate")
        idempotency = self.idempotency(bodies)
        # Not atomic, as on the real server: a retry with the same key creates only the runs the
        # first attempt did not.
        runs = [
            services.run_create_idempotent(
                owner=request.user, body=body, on_completion=body.get("on_completion", "delete"),
                idempotency=idempotency.batch_item(index) if idempotency else None,
            )
            for index, body in enumerate(bodies)
        ]
        response = Response([_run_body(run) for run, _ in runs])
        return _replayed(response, idempotency, any(created for _, created in runs))

    @action(detail=False, methods=["post"])
    def cancel(self, request: Request) -> HttpResponseBase:
        body = self.body()
        if isinstance(body, dict) and body.get("status") is not None and (
            body.get("thread_id") is not None or body.get("run_ids") is not None
        ):
            # Checked before the schema (whose oneOf would also fail) for the clearer message.
            services.runs_cancel_many(
                user=request.user,
                thread_id=body.get("thread_id"),
                run_ids=body.get("run_ids"),
                status=body["status"],
            )
        validate_body(body, "RunsCancel")
        services.runs_cancel_many(
            user=request.user,
            thread_id=body.get("thread_id"),
            run_ids=body.get("run_ids"),
            status=body.get("status"),
            action=_cancel_action(request),
        )
        return HttpResponse(status=status.HTTP_204_NO_CONTENT)


# --- crons ---------------------------------------------------------------------------------------


class ThreadCronViewSet(LangGraphViewSet):
    # POST /threads/{thread_id}/runs/crons: routed before the thread's runs, whose run_id would
    # take "crons".
    create_actions = frozenset({"create"})

    def create(self, request: Request, thread_id: str) -> Response:
        body = self.body("ThreadCronCreate")
        return Response(cron_json(cron_create(owner=request.user, body=body, thread_id=thread_id)))


class CronViewSet(LangGraphViewSet):
    # Stateless crons (POST /runs/crons) and every cron of the user: search, count, get, patch,
    # delete.
    lookup_field = "cron_id"
    create_actions = frozenset({"create"})

    def create(self, request: Request) -> Response:
        body = self.body("CronCreate")
        return Response(cron_json(cron_create(owner=request.user, body=body)))

    @action(detail=False, methods=["post"])
    def search(self, request: Request) -> Response:
        body = self.body("CronSearch", required=False)
        select = check_select(body.get("select"), CRON_FIELDS)
        queryset = crons_search(
            user=request.user,
            assistant_id=body.get("assistant_id"),
            thread_id=body.get("thread_id"),
            enabled=body.get("enabled"),
            metadata=body.get("metadata"),
            sort_by=body.get("sort_by"),
            sort_order=body.get("sort_order"),
        )
        limit, offset = body.get("limit", 10), body.get("offset", 0)
        total = queryset.count()
        rows = [cron_json(cron, select) for cron in queryset[offset : offset + limit]]
        return _paginated(rows, total, offset, limit)

    @action(detail=False, methods=["post"])
    def count(self, request: Request) -> Response:
        body = self.body("CronCountRequest", required=False)
        queryset = crons_search(
            user=request.user,
            assistant_id=body.get("assistant_id"),
            thread_id=body.get("thread_id"),
            metadata=body.get("metadata"),
        )
        return Response(queryset.count())

    def retrieve(self, request: Request, cron_id: str) -> Response:
        return Response(cron_json(cron_get(user=request.user, cron_id=cron_id)))

    def partial_update(self, request: Request, cron_id: str) -> Response:
        body = self.body("CronPatch", required=False)
        cron = cron_get(user=request.user, cron_id=cron_id)
        return Response(cron_json(cron_update(cron=cron, body=body)))

    def destroy(self, request: Request, cron_id: str) -> Response:
        cron_delete(cron=cron_get(user=request.user, cron_id=cron_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
