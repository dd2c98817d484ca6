"""``GET /metrics``: Prometheus text (the default) or, with ``?format=json`` as on the Agent
Server, a JSON summary.

The counters and histograms of every process come from ``prometheus_client``'s multiprocess
files (``project.telemetry``, summed by ``operations.metric_files``); the gauges of the present
from ``operations.live`` at scrape time.
Open to loopback (without a proxy's forwarding header) and to staff; anyone else needs
``Authorization: Bearer $METRICS_TOKEN``.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from operations.live import Live, live_state
from operations.metric_files import exposition, fold_dead_processes, read_totals, series

FORMATS = ("prometheus", "json")


class LiveCollector(Collector):
    """The gauges of ``operations.live``, read once per scrape."""

    def __init__(self, live: Live) -> None:
        self.live = live

    def collect(self) -> Iterator[Metric]:
        queues = {"execution": self.live.executions, "run": self.live.runs}
        gauges = [
            ("agentjobs_queue_depth", "Jobs pending (waiting for a worker or their due time).", "pending"),
            ("agentjobs_running_jobs", "Jobs a worker is running now.", "running"),
            ("agentjobs_oldest_pending_age_seconds", "Age of the oldest due pending job.",
             "oldest_pending_age_seconds"),
        ]
        for name, documentation, attribute in gauges:
            gauge = GaugeMetricFamily(name, documentation, labels=["kind"])
            for kind, queue in queues.items():
                gauge.add_metric([kind], getattr(queue, attribute))
            yield gauge
        yield GaugeMetricFamily(
            "agentjobs_workers_alive", "Worker processes of live clusters that take jobs.",
            value=self.live.workers_alive,
        )
        yield GaugeMetricFamily(
            "agentjobs_worker_clusters_alive", "Worker clusters whose status has not expired.",
            value=len(self.live.clusters),
        )


def _from_loopback(request: HttpRequest) -> bool:
    # Behind a proxy on the same machine every request comes from loopback: one it forwarded is
    # not local.
    if "HTTP_X_FORWARDED_FOR" in request.META or "HTTP_FORWARDED" in request.META:
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _refusal(request: HttpRequest) -> JsonResponse | None:
    token = settings.METRICS_TOKEN
    supplied = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
        return None
    if _from_loopback(request) or getattr(request.user, "is_staff", False):
        return None
    if not token:
        return JsonResponse(
            {"detail": "Metrics are served to loopback and staff only; set METRICS_TOKEN to "
                       "scrape them from elsewhere."},
            status=403,
        )
    response = JsonResponse({"detail": "Send Authorization: Bearer <METRICS_TOKEN>."}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def _json(totals: dict[str, dict[bytes, float]], live: Live) -> dict[str, Any]:
    jobs: dict[str, Any] = {"created": 0, "finished": {}, "webhook_deliveries": {}}
    http: dict[str, Any] = {"requests": 0, "by_status": {}}
    for raw_key, count in totals["counter"].items():
        entry = series(raw_key)
        value = int(count)
        if entry.family == "agentjobs_jobs_created":
            jobs["created"] += value
        elif entry.family == "agentjobs_jobs_finished":
            status = entry.labels["status"]
            jobs["finished"][status] = jobs["finished"].get(status, 0) + value
        elif entry.family == "agentjobs_webhook_deliveries":
            jobs["webhook_deliveries"][entry.labels["outcome"]] = value
        elif entry.family == "agentjobs_http_requests":
            http["requests"] += value
            status = entry.labels["status"]
            http["by_status"][status] = http["by_status"].get(status, 0) + value
    queue = {
        kind: {
            "n_pending": queue.pending,
            "n_running": queue.running,
            "oldest_pending_age_secs": round(queue.oldest_pending_age_seconds, 3),
        }
        for kind, queue in (("executions", live.executions), ("runs", live.runs))
    }
    return {
        "queue": queue,
        "workers": {
            "alive": live.workers_alive,
            "clusters": [
                {"host": c.host, "pid": c.pid, "status": c.status, "workers": list(c.workers)}
                for c in live.clusters
            ],
        },
        "jobs": jobs,
        "http": http,
    }


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    output = request.GET.get("format", "prometheus")
    if output not in FORMATS:
        return JsonResponse(
            {"detail": f"format must be one of {', '.join(FORMATS)}, not {output!r}."}, status=422
        )
    directory = settings.PROMETHEUS_MULTIPROC_DIR
    fold_dead_processes(directory)
    totals = read_totals(directory)
    live = live_state()
    if output == "json":
        return JsonResponse(_json(totals, live))
    registry = CollectorRegistry()
    registry.register(LiveCollector(live))
    body = exposition(totals).encode() + generate_latest(registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
