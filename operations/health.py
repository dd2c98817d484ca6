"""Probes for a load balancer or Kubernetes: ``/healthz`` (liveness) and ``/readyz``
(readiness). Open to anyone, as ``/ok`` is, and cheap: no query beyond ``SELECT 1``."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from operations.clusters import clusters_alive, worker_processes_alive
from project.shared_broker import forget_broker, shared_broker


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers: nothing else is looked at, so a database outage never gets every
    API process restarted."""
    return JsonResponse({"status": "ok"})


class NotReady(Exception):
    """A dependency answered, but not as serving needs it."""


def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = {"ok": True, **(check() or {})}
    except NotReady as error:
        result = {"ok": False, "error": str(error)}
    except Exception as error:  # noqa: BLE001 any failure of a dependency is "not ready", with its reason
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _broker() -> None:
    try:
        if not shared_broker().ping():
            raise NotReady("the broker did not answer its ping")
    except Exception:
        forget_broker()  # a new connection at the next probe, as the queueing code does
        raise


def _workers() -> dict[str, Any]:
    clusters = clusters_alive()
    alive = worker_processes_alive(clusters)
    if not alive:
        raise NotReady(
            "no worker cluster has saved its status in the last 3 s"
            if not clusters else
            "worker clusters are up but none takes jobs (starting or stopping)"
        )
    return {"clusters": len(clusters), "workers": alive}


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the broker answer and a worker cluster is alive; else 503 with
    each check's result and the first failure as ``reason``."""
    checks = {"database": _timed(_database), "broker": _timed(_broker)}
    if settings.HEALTH_REQUIRE_WORKERS:
        checks["workers"] = _timed(_workers)
    failed = [name for name, result in checks.items() if not result["ok"]]
    body: dict[str, Any] = {"status": "unavailable" if failed else "ok", "checks": checks}
    if failed:
        body["reason"] = f"{failed[0]}: {checks[failed[0]]['error']}"
    return JsonResponse(body, status=503 if failed else 200)
