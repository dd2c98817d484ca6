"""The LangGraph Agent Server API: assistants, threads, thread state, runs, system routes.

Thin views: parse the JSON body (whatever the content type), check it against the API's schema,
call one service, render with ``runs.serializers``. Every error is ``{"detail": "..."}``.
"""

from __future__ import annotations

import json
import math
from importlib import metadata as package_metadata
from typing import Any

from django.conf import settings
from django.http import Http404, HttpResponse, StreamingHttpResponse
from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from project.throttling import CreateRateThrottle
from runs import services
from runs.errors import NotFound, Unprocessable
from runs.graphs import graph_get
from runs.jsonable import to_json
from runs.models import CancelAction, DiscardedRun, Run, RunStatus
from runs.serializers import (
    ASSISTANT_FIELDS,
    RUN_FIELDS,
    THREAD_FIELDS,
    assistant_json,
    assistant_version_json,
    check_select,
    run_json,
    thread_json,
)
from runs.validation import INVALID_JSON, parse_json_body, validate_body
from runs.waiting import run_create_awaited, run_result_chunks


def _detail_response(detail: str, status_code: int, headers: dict | None = None) -> Response:
    return Response({"detail": detail}, status=status_code, headers=headers)


class LangGraphView(APIView):
    """Base of every runs API view: real-server error bodies and lenient JSON bodies."""

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
            auth_header = self.get_authenticate_header(self.request)
            if auth_header:
                exc.auth_header = auth_header
            else:
                exc.status_code = status.HTTP_403_FORBIDDEN
        if isinstance(exc, Http404):
            return _detail_response("Not Found", 404)
        if isinstance(exc, exceptions.ParseError):
            return _detail_response(INVALID_JSON, 422)
        if isinstance(exc, exceptions.APIException):
            headers = {}
            if getattr(exc, "auth_header", None):
                headers["WWW-Authenticate"] = exc.auth_header
            if getattr(exc, "wait", None):
                headers["Retry-After"] = str(math.ceil(exc.wait))
            detail = exc.detail
            if isinstance(detail, (list, dict)):
                detail = json.dumps(detail)
            return _detail_response(str(detail), exc.status_code, headers)
        return super().handle_exception(exc)

    def body(self, schema: str | None = None, *, required: bool = True) -> Any:
        """The request's JSON body, validated against the API component ``schema``."""
        return parse_json_body(self.request.body, schema, required=required)


IDEMPOTENT_REPLAYED = "Idempotent-Replayed"


class CreateView(LangGraphView):
    """A view whose POST creates: throttled per user like every create of the platform (the
    executions API's "create" scope and rate, in the shared cache), and an ``Idempotency-Key``
    header makes a retry answer with the object the first request created."""

    throttle_scope = "create"

    def get_throttles(self) -> list:
        return [CreateRateThrottle()] if self.request.method == "POST" else []

    def idempotency(self, body: Any) -> services.Idempotency | None:
        return services.Idempotency.from_header(
            self.request.headers.get("Idempotency-Key"),
            method=self.request.method, path=self.request.path, body=body,
        )


def _replayed(response: HttpResponse, idempotency: Any, created: bool) -> HttpResponse:
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
    return value.strip().lower() in {"1", "true", "yes", "on"}


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


# --- system --------------------------------------------------------------------------------------


class OkView(LangGraphView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


class InfoView(LangGraphView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        try:
            langgraph_version = package_metadata.version("langgraph")
        except package_metadata.PackageNotFoundError:
            langgraph_version = None
        return Response(
            {
                "version": getattr(settings, "RUNS_API_VERSION", "0.1.0"),
                "langgraph_py_version": langgraph_version,
                "flags": {"assistants": True, "crons": False, "langsmith": False},
                "metadata": {},
            }
        )


# --- assistants ----------------------------------------------------------------------------------


class AssistantsView(CreateView):
    def post(self, request: Request) -> Response:
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


class AssistantSearchView(LangGraphView):
    def post(self, request: Request) -> Response:
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


class AssistantCountView(LangGraphView):
    def post(self, request: Request) -> Response:
        body = self.body("AssistantCountRequest", required=False)
        queryset = services.assistants_search(
            user=request.user,
            metadata=body.get("metadata"),
            graph_id=body.get("graph_id"),
            name=body.get("name"),
        )
        return Response(queryset.count())


class AssistantDetailView(LangGraphView):
    def get(self, request: Request, assistant_id: str) -> Response:
        return Response(assistant_json(services.assistant_get(user=request.user, assistant_id=assistant_id)))

    def patch(self, request: Request, assistant_id: str) -> Response:
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

    def delete(self, request: Request, assistant_id: str) -> Response:
        pk = services.parse_uuid(assistant_id, "assistant")
        try:
            assistant = services.assistant_get(user=request.user, assistant_id=pk)
        except NotFound:
            raise NotFound(f"Assistant with ID {pk} not found") from None
        services.assistant_delete(user=request.user, assistant=assistant)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AssistantGraphView(LangGraphView):
    def get(self, request: Request, assistant_id: str) -> Response:
        assistant = services.assistant_get(user=request.user, assistant_id=assistant_id)
        xray: Any = request.query_params.get("xray", "false")
        xray = int(xray) if xray.isdigit() else xray.lower() in {"true", "1"}
        drawable = graph_get(assistant.graph_id).get_graph(xray=xray)
        return Response(to_json(drawable.to_json()))


class AssistantSubgraphsView(LangGraphView):
    def get(self, request: Request, assistant_id: str, namespace: str | None = None) -> Response:
        assistant = services.assistant_get(user=request.user, assistant_id=assistant_id)
        graph = graph_get(assistant.graph_id)
        recurse = _query_bool(request, "recurse")
        subgraphs = {
            ns: to_json(sub.get_input_jsonschema())
            for ns, sub in graph.get_subgraphs(namespace=namespace, recurse=recurse)
        }
        return Response(subgraphs)


class AssistantSchemasView(LangGraphView):
    def get(self, request: Request, assistant_id: str) -> Response:
        assistant = services.assistant_get(user=request.user, assistant_id=assistant_id)
        graph = graph_get(assistant.graph_id)

        def schema(getter: Any) -> Any:
            try:
                return to_json(getter())
            except Exception:  # a graph without that schema: the real server answers null
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


class AssistantVersionsView(LangGraphView):
    def post(self, request: Request, assistant_id: str) -> Response:
        body = self.body("AssistantVersionsSearchRequest", required=False)
        assistant = services.assistant_get(user=request.user, assistant_id=assistant_id)
        versions = services.json_filter(assistant.versions.all(), "metadata", body.get("metadata"))
        limit, offset = body.get("limit", 10), body.get("offset", 0)
        return Response(
            [assistant_version_json(v) for v in versions.order_by("-version")[offset : offset + limit]]
        )


class AssistantLatestView(LangGraphView):
    def post(self, request: Request, assistant_id: str) -> Response:
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


class ThreadsView(CreateView):
    def post(self, request: Request) -> Response:
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


class ThreadSearchView(LangGraphView):
    def post(self, request: Request) -> Response:
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


class ThreadCountView(LangGraphView):
    def post(self, request: Request) -> Response:
        body = self.body("ThreadCountRequest", required=False)
        queryset = services.threads_search(
            user=request.user,
            metadata=body.get("metadata"),
            values=body.get("values"),
            status=body.get("status"),
        )
        return Response(queryset.count())


class ThreadPruneView(LangGraphView):
    def post(self, request: Request) -> Response:
        body = self.body("ThreadPruneRequest")
        count = services.threads_prune(
            user=request.user, thread_ids=body["thread_ids"], strategy=body.get("strategy", "delete")
        )
        return Response({"pruned_count": count})


class ThreadDetailView(LangGraphView):
    def get(self, request: Request, thread_id: str) -> Response:
        return Response(thread_json(services.thread_get(user=request.user, thread_id=thread_id)))

    def patch(self, request: Request, thread_id: str) -> Response:
        body = self.body("ThreadPatch", required=False)
        thread = services.thread_get(user=request.user, thread_id=thread_id, not_found="Not Found")
        return Response(thread_json(services.thread_update(thread=thread, metadata=body.get("metadata"))))

    def delete(self, request: Request, thread_id: str) -> Response:
        services.thread_delete(thread=services.thread_get(user=request.user, thread_id=thread_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ThreadCopyView(LangGraphView):
    def post(self, request: Request, thread_id: str) -> Response:
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        return Response(thread_json(services.thread_copy(thread=thread)))


class ThreadStateView(LangGraphView):
    def get(self, request: Request, thread_id: str, checkpoint_id: str | None = None) -> Response:
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        checkpoint = {"checkpoint_id": checkpoint_id} if checkpoint_id else None
        return Response(
            services.thread_state(
                thread=thread, checkpoint=checkpoint, subgraphs=_query_bool(request, "subgraphs")
            )
        )

    def post(self, request: Request, thread_id: str) -> Response:
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



class ThreadStateAtView(ThreadStateView):
    """``/state/{checkpoint_id}`` reads a past state; updates go to ``/state`` (as on the real server)."""

    http_method_names = ["get", "head", "options"]

class ThreadStateAtCheckpointView(LangGraphView):
    def post(self, request: Request, thread_id: str) -> Response:
        body = self.body("ThreadStateCheckpointRequest")
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        return Response(
            services.thread_state(
                thread=thread, checkpoint=body["checkpoint"], subgraphs=bool(body.get("subgraphs"))
            )
        )


class ThreadHistoryView(LangGraphView):
    def get(self, request: Request, thread_id: str) -> Response:
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        limit = _query_int(request, "limit", 10, 1, 1000)
        before = request.query_params.get("before")
        return Response(
            services.thread_history(
                thread=thread, limit=limit, before={"checkpoint_id": before} if before else None
            )
        )

    def post(self, request: Request, thread_id: str) -> Response:
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
    """A 200 whose body is the run's final result once it ends (``runs.waiting.run_result_chunks``:
    whitespace meanwhile keeps the connection open, so the status is sent at once)."""
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


class ThreadRunsView(CreateView):
    def get(self, request: Request, thread_id: str) -> Response:
        thread = services.thread_get(user=request.user, thread_id=thread_id)
        limit = _query_int(request, "limit", 10, 1, 1000)
        offset = _query_int(request, "offset", 0, 0, 10**9)
        select = check_select(request.query_params.getlist("select"), RUN_FIELDS)
        run_status = request.query_params.get("status") or None
        if run_status and run_status not in RunStatus.values:
            raise Unprocessable(f"Invalid status: must be one of {list(RunStatus.values)}")
        queryset = services.runs_list(thread=thread, status=run_status)
        return Response([run_json(r, select) for r in queryset[offset : offset + limit]])

    def post(self, request: Request, thread_id: str) -> Response:
        body = self.body("RunCreateStateful")
        idempotency = self.idempotency(body)
        run, created = services.run_create_idempotent(
            owner=request.user, body=body, thread_id=thread_id, idempotency=idempotency
        )
        headers = {"Content-Location": f"/threads/{run.thread_id}/runs/{run.pk}"}
        return _replayed(Response(_run_body(run), headers=headers), idempotency, created)


class ThreadRunWaitView(CreateView):
    def post(self, request: Request, thread_id: str) -> HttpResponse:
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


class RunDetailView(LangGraphView):
    def get(self, request: Request, thread_id: str, run_id: str) -> Response:
        return Response(run_json(services.run_get(user=request.user, thread_id=thread_id, run_id=run_id)))

    def delete(self, request: Request, thread_id: str, run_id: str) -> Response:
        try:
            run = services.run_get(user=request.user, thread_id=thread_id, run_id=run_id)
        except NotFound:
            raise NotFound("Run not found") from None
        services.run_delete(run=run)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RunJoinView(LangGraphView):
    def get(self, request: Request, thread_id: str, run_id: str) -> HttpResponse:
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


class RunCancelView(LangGraphView):
    def post(self, request: Request, thread_id: str, run_id: str) -> HttpResponse:
        action = request.query_params.get("action") or CancelAction.INTERRUPT
        if action not in CancelAction.values:
            raise Unprocessable(f"Invalid action: must be one of {list(CancelAction.values)}")
        run = services.run_cancel(user=request.user, thread_id=thread_id, run_id=run_id, action=action)
        if _query_bool(request, "wait"):
            return result_response(thread_id=run.thread_id, run_id=run.pk)
        return HttpResponse(status=status.HTTP_202_ACCEPTED)


class StatelessRunsView(CreateView):
    def post(self, request: Request) -> Response:
        body = self.body("RunCreateStateless")
        idempotency = self.idempotency(body)
        run, created = services.run_create_idempotent(
            owner=request.user, body=body, on_completion=body.get("on_completion", "delete"),
            idempotency=idempotency,
        )
        headers = {"Content-Location": f"/threads/{run.thread_id}/runs/{run.pk}"}
        return _replayed(Response(_run_body(run), headers=headers), idempotency, created)


class StatelessRunWaitView(CreateView):
    def post(self, request: Request) -> HttpResponse:
        body = self.body("RunCreateStreamingStateless")
        idempotency = self.idempotency(body)
        run, created, discard_thread = run_create_awaited(owner=request.user, body=body, idempotency=idempotency)
        if isinstance(run, DiscardedRun):
            # The first request's response has read the result and deleted the thread.
            response = Response(run.result, headers=_run_location_headers(run.thread_id, run.pk))
            return _replayed(response, idempotency, created)
        response = result_response(
            thread_id=run.thread_id,
            run_id=run.pk,
            discard_thread=discard_thread,
            cancel_on_disconnect=body.get("on_disconnect") == "cancel",
        )
        return _replayed(response, idempotency, created)


class RunBatchView(CreateView):
    def post(self, request: Request) -> Response:
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


class RunsCancelView(LangGraphView):
    def post(self, request: Request) -> HttpResponse:
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
        action = request.query_params.get("action") or CancelAction.INTERRUPT
        if action not in CancelAction.values:
            raise Unprocessable(f"Invalid action: must be one of {list(CancelAction.values)}")
        services.runs_cancel_many(
            user=request.user,
            thread_id=body.get("thread_id"),
            run_ids=body.get("run_ids"),
            status=body.get("status"),
            action=action,
        )
        return HttpResponse(status=status.HTTP_204_NO_CONTENT)

