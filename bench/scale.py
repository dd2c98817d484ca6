"""Lists, searches and admin pages at a quarter's size (`make bench-scale`, issue 16).

Loads, with a few INSERT … SELECT statements (no ORM, no Python loop per row), a data set shaped
like a team's quarter: SIZE executions over 90 days (90 % completed, the newest 0.2 % pending or
running, two events each), SIZE/5 threads and SIZE/2 runs (one event each), plus one execution and
one run with 5,000 events. Then it times sequential requests through Django's test client (the
whole request stack, views, serializers, templates; no socket) and prints p50/p95 per request.

SIZE is 1,000,000 by default (`--size 100000` for a quick look; the CI test uses less). The data
set goes to `--database-url` / `DATABASE_URL` (PostgreSQL: a database of its own, the URL's name +
`_scale` unless it already says "scale") or to var/bench-scale/db.sqlite3. `--reuse` keeps a data
set of the same size from an earlier run instead of loading it again. `--prune` measures
`manage.py executions prune` removing half of the executions (time, peak RSS) at the end; it
deletes them, so the next run loads again.

Every statement runs under a 60 s statement timeout on PostgreSQL: a page that never finishes is
printed as a timeout rather than hanging the bench.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCALE_DIR = ROOT / "var" / "bench-scale"
DAYS = 90
BIG_EVENTS = 5_000
# Targets and their share of the executions (percent): a rare one shows whether its filter is
# read off an index or found by walking every row.
TARGETS = (("summarize", 40), ("translate", 30), ("classify", 20), ("demo.pipeline", 9), ("echo", 1))
STATEMENT_TIMEOUT_MS = 60_000


# --- configuration ---------------------------------------------------------------------------------


def bench_database_url(url: str | None) -> str | None:
    """The bench's own PostgreSQL database beside the one ``url`` names (None: SQLite)."""
    if not url:
        return None
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "agentjobs"
    if "scale" not in name:
        name += "_scale"
    return urlunsplit(parts._replace(path="/" + name))


def configure(database_url: str | None) -> None:
    """Point Django at the bench database (created if missing) and set it up."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("Q_CLUSTER_NAME", "agentjobs-scale")
    if database_url:
        os.environ["DATABASE_URL"] = database_url
        _postgres_create(database_url)
    else:
        SCALE_DIR.mkdir(parents=True, exist_ok=True)
        os.environ.pop("DATABASE_URL", None)
        os.environ["DATA_DIR"] = str(SCALE_DIR)
    import django

    django.setup()
    from django.conf import settings

    settings.ALLOWED_HOSTS = ["*"]
    settings.DEBUG = False


def _postgres_create(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


# --- the data set ----------------------------------------------------------------------------------


@dataclass
class Dialect:
    """The few expressions PostgreSQL and SQLite spell differently."""

    vendor: str

    def numbers(self, count: int) -> str:
        if self.vendor == "postgresql":
            return f"WITH g(n) AS (SELECT generate_series(0::bigint, {count - 1}))"
        return f"WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < {count - 1})"

    def uuid(self, salt: str) -> str:
        if self.vendor == "postgresql":
            return f"md5('{salt}' || n)::uuid"
        return "lower(hex(randomblob(16)))"

    def ago(self, seconds: str) -> str:
        """The moment ``seconds`` (an SQL expression) before the load started."""
        if self.vendor == "postgresql":
            return f"(%(now)s::timestamptz - make_interval(secs => ({seconds})))"
        # printf's sign: "+60.0 seconds" for a moment after the load started (an update time).
        return f"strftime('%Y-%m-%d %H:%M:%f', %(now)s, printf('%+.3f seconds', -({seconds})))"

    def json(self, *pairs: str) -> str:
        function = "jsonb_build_object" if self.vendor == "postgresql" else "json_object"
        return f"{function}({', '.join(pairs)})"

    def text(self, expression: str) -> str:
        return f"CAST({expression} AS TEXT)" if self.vendor == "sqlite" else f"({expression})::text"


def _status_case(n: str, size: int, active: tuple[str, str], finished: tuple[str, str, str]) -> str:
    """The newest 0.2 % active, the rest 90 % / 7 % / 3 % over three terminal statuses."""
    newest = max(2, size // 500)
    return (
        f"CASE WHEN {n} < {newest} THEN (CASE WHEN {n} % 2 = 0 THEN '{active[0]}' ELSE '{active[1]}' END) "
        f"WHEN ({n} * 7919) % 100 < 90 THEN '{finished[0]}' "
        f"WHEN ({n} * 7919) % 100 < 97 THEN '{finished[1]}' ELSE '{finished[2]}' END"
    )


def _escaped(sql: str) -> str:
    """``sql`` with every ``%`` but the ``%(name)s`` placeholders doubled, as the drivers expect."""
    return re.sub(r"%(?!\()", "%%", sql)


def load(size: int, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load the data set into the configured database (emptying the tables it fills first)."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from accounts.models import api_key_create
    from runs.models import Assistant

    dialect = Dialect(connection.vendor)
    from executions.models import Execution
    from runs.models import Run, Thread

    # NOT NULL columns other features add after this bench was written get their model default,
    # so the loader keeps working as the models grow.
    written = {
        Execution: {
            "id", "owner_id", "type", "target_id", "inputs", "config", "status", "created_at",
            "started_at", "completed_at", "cancelled_at", "current_step", "total_steps", "step_name",
            "percentage", "outputs", "error", "worker", "heartbeat_at", "attempts", "event_seq",
            "request_hash", "webhook", "priority",
        },
        Thread: {
            "thread_id", "owner_id", "metadata", "config", "status", "values", "resting_status",
            "interrupts", "has_run", "temporary", "created_at", "updated_at", "state_updated_at",
            "request_hash",
        },
        Run: {
            "run_id", "thread_id", "assistant_id", "owner_id", "status", "metadata", "kwargs",
            "multitask_strategy", "created_at", "updated_at", "started_at", "ended_at", "heartbeat_at",
            "worker", "attempts", "cancel_action", "result", "error", "on_completion", "request_hash",
        },
    }
    defaults: dict[str, Any] = {}

    def extra_fields(model: Any) -> list[Any]:
        return [
            f for f in model._meta.concrete_fields
            if f.column not in written[model] and not f.null and f.has_default()
        ]

    def extra_columns(model: Any) -> str:
        return "".join(f", {connection.ops.quote_name(f.column)}" for f in extra_fields(model))

    def extra_values(model: Any) -> str:
        values = ""
        for f in extra_fields(model):
            key = f"default_{model._meta.model_name}_{f.column}"
            defaults[key] = f.get_db_prep_save(f.get_default(), connection)
            values += f", %({key})s"
        return values

    d = dialect
    span = DAYS * 86400
    threads = max(1, size // 5)
    runs = max(1, size // 2)
    now = timezone.now()
    params = {"now": now.isoformat() if d.vendor == "postgresql" else now.strftime("%Y-%m-%d %H:%M:%S.%f")}
    User = get_user_model()
    started = time.monotonic()
    with transaction.atomic():
        tables = (
            "runs_runevent", "runs_run", "runs_thread", "executions_executionevent",
            "executions_execution",
        )
        with connection.cursor() as cursor:
            if d.vendor == "postgresql":
                # CASCADE: rows of other apps pointing at these (crons, schedules' firings) go too.
                cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
            else:
                for table in tables:
                    cursor.execute(f"DELETE FROM {table}")
        User.objects.filter(username__startswith="scale-").delete()
        user = User.objects.create_user("scale-bench")
        other = User.objects.create_user("scale-other")
        User.objects.create_superuser("scale-admin", password="scale-admin")
        _, api_key = api_key_create(user=user, name="scale bench")
        assistant = Assistant.objects.create(owner=user, graph_id="agent", name="scale bench")

        # Every tenth execution belongs to someone else: the owner scoping must use an index.
        owner = f"CASE WHEN n % 10 = 4 THEN {other.pk} ELSE {user.pk} END"
        age = f"(n * {span}.0 / {size})"
        status = _status_case("n", size, ("pending", "running"), ("completed", "failed", "cancelled"))
        outputs = d.json("'summary'", "'A short summary of report ' || " + d.text("n"), "'tokens'", "n % 900")
        error = d.json("'type'", "'RuntimeError'", "'message'", "'upstream timed out'")
        bounds, total = [], 0
        for name, share in TARGETS:
            total += share
            bounds.append(f"WHEN n % 100 < {total} THEN '{name}'")
        target = "CASE " + " ".join(bounds) + " END"
        statements = [
            (
                "executions",
                f"""{d.numbers(size)}
                INSERT INTO executions_execution (
                    id, owner_id, type, target_id, inputs, config, status, created_at, started_at,
                    completed_at, cancelled_at, current_step, total_steps, step_name, percentage,
                    outputs, error, worker, heartbeat_at, attempts, event_seq, request_hash, webhook,
                    priority{extra_columns(Execution)}
                )
                SELECT {d.uuid("e")}, {owner},
                    CASE WHEN {target} = 'demo.pipeline' THEN 'pipeline' ELSE 'agent' END, {target},
                    {d.json("'text'", "'Quarterly report number ' || " + d.text("n"))}, {d.json()},
                    s, {d.ago(age)},
                    CASE WHEN s = 'pending' OR (s = 'cancelled' AND n % 2 = 0) THEN NULL
                         ELSE {d.ago(age + " - 0.5")} END,
                    CASE WHEN s IN ('completed', 'failed') THEN {d.ago(age + " - 1 - n % 60")} END,
                    CASE WHEN s = 'cancelled' THEN {d.ago(age + " - 2")} END,
                    CASE WHEN s = 'completed' THEN 3 ELSE 1 END, 3, 'summarize',
                    CASE WHEN s = 'completed' THEN 100 ELSE 33 END,
                    CASE WHEN s = 'completed' THEN {outputs} END,
                    CASE WHEN s = 'failed' THEN {error} END,
                    CASE WHEN s = 'pending' THEN '' ELSE 'bench-host:4242' END,
                    CASE WHEN s = 'pending' THEN NULL ELSE {d.ago(age + " - 1")} END,
                    CASE WHEN s = 'pending' THEN 0 ELSE 1 END, 2, '', '',
                    CASE WHEN n % 50 = 0 THEN 5 ELSE 0 END{extra_values(Execution)}
                FROM (SELECT n, {status} AS s FROM g) AS rows
                """,
            ),
            (
                "execution events",
                f"""
                INSERT INTO executions_executionevent (execution_id, seq, type, data, at)
                SELECT e.id, k.seq, CASE k.seq WHEN 1 THEN 'created' ELSE 'status' END,
                    CASE k.seq WHEN 1 THEN {d.json()} ELSE {d.json("'status'", "e.status")} END,
                    e.created_at
                FROM executions_execution e CROSS JOIN (SELECT 1 AS seq UNION ALL SELECT 2) k
                """,
            ),
            (
                "threads",
                f"""{d.numbers(threads)}
                INSERT INTO runs_thread (
                    thread_id, owner_id, metadata, config, status, "values", resting_status,
                    interrupts, has_run, temporary, created_at, updated_at, state_updated_at,
                    request_hash{extra_columns(Thread)}
                )
                SELECT {d.uuid("t")}, {user.pk},
                    {d.json("'user_id'", "'user-' || " + d.text("n % 1000"), "'graph_id'", "'agent'")},
                    {d.json()}, 'idle', {d.json("'messages'", "n % 7")}, 'idle', {d.json()},
                    TRUE, FALSE, {d.ago(f"(n * {span}.0 / {threads})")},
                    {d.ago(f"(n * {span}.0 / {threads}) - 60")}, {d.ago(f"(n * {span}.0 / {threads}) - 60")},
                    ''{extra_values(Thread)}
                FROM g
                """,
            ),
        ]
        run_age = f"(rows.n * {span}.0 / {runs})"
        run_status = _status_case("n", runs, ("pending", "running"), ("success", "error", "interrupted"))
        statements += [
            (
                "runs",
                f"""{d.numbers(runs)}
                INSERT INTO runs_run (
                    run_id, thread_id, assistant_id, owner_id, status, metadata, kwargs,
                    multitask_strategy, created_at, updated_at, started_at, ended_at, heartbeat_at,
                    worker, attempts, cancel_action, result, error, on_completion, request_hash{extra_columns(Run)}
                )
                SELECT {d.uuid("r")}, t.thread_id, '{assistant.pk.hex if d.vendor == "sqlite" else assistant.pk}',
                    {user.pk}, rows.s, {d.json()}, {d.json("'input'", d.json("'n'", "rows.n"))}, 'enqueue',
                    {d.ago(run_age)}, {d.ago(run_age + " - 2")},
                    CASE WHEN rows.s = 'pending' THEN NULL ELSE {d.ago(run_age + " - 0.5")} END,
                    CASE WHEN rows.s IN ('pending', 'running') THEN NULL ELSE {d.ago(run_age + " - 2")} END,
                    NULL, '', 1, '', NULL, NULL, '', ''{extra_values(Run)}
                FROM (SELECT n, {run_status} AS s FROM g) AS rows
                JOIN (SELECT thread_id, ROW_NUMBER() OVER (ORDER BY created_at DESC) - 1 AS k
                      FROM runs_thread) AS t ON t.k = rows.n % {threads}
                """,
            ),
            (
                "run events",
                f"""
                INSERT INTO runs_runevent (run_id, seq, event, data, created_at, thread_only)
                SELECT run_id, 1, 'metadata', '{{"run_id": "' || {d.text("run_id")} || '"}}', created_at, FALSE
                FROM runs_run
                """,
            ),
        ]
        with connection.cursor() as cursor:
            for label, sql in statements:
                began = time.monotonic()
                cursor.execute(_escaped(sql), {**params, **defaults})
                rows = f"{cursor.rowcount:,} rows" if cursor.rowcount >= 0 else "rows"
                log(f"  loaded {label}: {rows} in {time.monotonic() - began:.1f} s")
            # One execution and one run whose pages have 5,000 events each.
            cursor.execute(
                "SELECT id FROM executions_execution WHERE owner_id = %s AND status = 'completed' "
                "ORDER BY created_at DESC LIMIT 1",
                [user.pk],
            )
            big_execution = cursor.fetchone()[0]
            cursor.execute(
                _escaped(f"""{d.numbers(BIG_EVENTS)}
                INSERT INTO executions_executionevent (execution_id, seq, type, data, at)
                SELECT %(id)s, n + 3, 'progress',
                    {d.json("'step'", "n", "'message'", "'chunk ' || " + d.text("n"))}, %(now)s
                FROM g
                """),
                {**params, "id": big_execution},
            )
            cursor.execute(
                "UPDATE executions_execution SET event_seq = %s WHERE id = %s",
                [BIG_EVENTS + 2, big_execution],
            )
            cursor.execute(
                "SELECT run_id FROM runs_run WHERE status = 'success' ORDER BY created_at DESC LIMIT 1"
            )
            big_run = cursor.fetchone()[0]
            cursor.execute(
                _escaped(f"""{d.numbers(BIG_EVENTS)}
                INSERT INTO runs_runevent (run_id, seq, event, data, created_at, thread_only)
                SELECT %(id)s, n + 2, 'values', '{{"messages": ["chunk ' || {d.text("n")} || '"]}}', %(now)s, FALSE
                FROM g
                """),
                {**params, "id": big_run},
            )
    with connection.cursor() as cursor:
        began = time.monotonic()
        if d.vendor == "postgresql":
            # Fresh statistics and visibility map, as autovacuum would leave them within minutes.
            for table in (
                "executions_execution", "executions_executionevent", "runs_thread", "runs_run",
                "runs_runevent",
            ):
                cursor.execute(f"VACUUM ANALYZE {table}")
        else:
            cursor.execute("ANALYZE")
        log(f"  analyzed in {time.monotonic() - began:.1f} s")
    log(f"loaded {size:,} executions in {time.monotonic() - started:.0f} s")
    return {"api_key": api_key}


def dataset_size() -> int | None:
    """The size an earlier load left (None when there is none)."""
    from django.contrib.auth import get_user_model

    from executions.models import Execution

    if not get_user_model().objects.filter(username="scale-bench").exists():
        return None
    return Execution.objects.count()


def fresh_api_key() -> str:
    from django.contrib.auth import get_user_model

    from accounts.models import api_key_create

    _, key = api_key_create(user=get_user_model().objects.get(username="scale-bench"), name="scale")
    return key


# --- measuring -------------------------------------------------------------------------------------


@dataclass
class Figure:
    label: str
    p50_ms: float
    p95_ms: float
    status: int
    note: str = ""
    # PostgreSQL: rows the page's query read from the big tables (EXPLAIN ANALYZE), the figure
    # that shows whether an index answered it; None elsewhere or for pages without one.
    rows_read: int | None = None


BIG_TABLES = frozenset({"executions_execution", "runs_run", "runs_thread"})
SCAN_NODES = frozenset({"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan"})


def _plan_rows_read(plan: dict[str, Any]) -> int:
    rows = 0
    if plan.get("Node Type") in SCAN_NODES and plan.get("Relation Name") in BIG_TABLES:
        loops = plan.get("Actual Loops", 1)
        removed = plan.get("Rows Removed by Filter", 0) + plan.get("Rows Removed by Index Recheck", 0)
        rows += round((plan.get("Actual Rows", 0) + removed) * loops)
    for child in plan.get("Plans", []):
        rows += _plan_rows_read(child)
    return rows


def rows_read(request: Callable[[], Any]) -> int | None:
    """The most rows one page query of ``request`` read from the big tables (PostgreSQL only).

    A page query is a SELECT with a LIMIT that is not a count: the bounded count reads up to
    ``EXACT_COUNT_LIMIT`` rows by design. With an index matching the filter and the ordering it
    reads about the page's rows; without one it reads every row it skips.
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "postgresql":
        return None
    with CaptureQueriesContext(connection) as captured:
        request()
    most: int | None = None
    for query in captured.captured_queries:
        sql = query["sql"]
        if not sql.startswith("SELECT") or " LIMIT " not in sql or "COUNT(" in sql.upper():
            continue
        if not any(table in sql for table in BIG_TABLES):
            continue
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
            plan = cursor.fetchone()[0]
        if isinstance(plan, str):
            plan = json.loads(plan)
        most = max(most or 0, _plan_rows_read(plan[0]["Plan"]))
    return most


def timed(label: str, request: Callable[[], Any], repeat: int, budget_s: float = 60.0) -> Figure:
    """p50/p95 of ``request`` over ``repeat`` calls after one warm-up (fewer if the budget runs
    out: a page that takes seconds is measured a few times, not twenty), and its rows read."""
    from django.db import OperationalError

    samples: list[float] = []
    status = 0
    began = time.monotonic()
    try:
        request()
        for _ in range(repeat):
            start = time.perf_counter()
            response = request()
            samples.append((time.perf_counter() - start) * 1000)
            status = response.status_code
            if time.monotonic() - began > budget_s:
                break
        read = rows_read(request)
    except OperationalError as exc:  # statement timeout
        return Figure(label, float("inf"), float("inf"), 0, f"timed out: {str(exc).splitlines()[0]}")
    return Figure(label, statistics.median(samples), _p95(samples), status, rows_read=read)


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


# The documented filters and orderings of GET /api/v1/executions, one at a time (the CI test
# asserts that an index answers each of them).
API_LIST_QUERIES = (
    "",
    "?status=failed",
    "?status=cancelled",
    "?status=pending&status=running",
    "?target_id=summarize&ordering=-created_at",
    "?target_id=echo",
    "?type=pipeline",
    "?ordering=-created_at",
    "?ordering=created_at",
    "?ordering=-started_at",
    "?ordering=started_at",
    "?ordering=-completed_at",
    "?ordering=completed_at",
    "?priority=0",
    "?ordering=-priority",
)


def measure(*, api_key: str, repeat: int, log: Callable[[str], None] = print) -> list[Figure]:
    """Time the lists, searches and admin pages of the loaded data set."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from executions.models import Execution
    from runs.models import Run, Thread

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    # The 400 of a page past the bound is expected: no warning line per request.
    logging.getLogger("django.request").setLevel(logging.ERROR)
    logging.getLogger("agentjobs.http").setLevel(logging.WARNING)  # a line per request
    api = Client(HTTP_X_API_KEY=api_key)
    staff = Client()
    staff.force_login(get_user_model().objects.get(username="scale-admin"))
    user = get_user_model().objects.get(username="scale-bench")
    mine = Execution.objects.filter(owner=user)
    execution = mine.order_by("-created_at").values_list("pk", flat=True)[1000]
    big_execution = mine.order_by("-event_seq").values_list("pk", flat=True)[0]
    thread = Thread.objects.filter(owner=user).order_by("-created_at").values_list("pk", flat=True)[500]
    big_run = Run.objects.order_by("-created_at").filter(status="success").values_list("pk", flat=True)[0]
    total = mine.count()

    def get(client: Client, url: str) -> Callable[[], Any]:
        return lambda: client.get(url)

    def post(url: str, body: dict) -> Callable[[], Any]:
        return lambda: api.post(url, json.dumps(body), content_type="application/json")

    executions = "/api/v1/executions"
    requests: list[tuple[str, Callable[[], Any]]] = [
        (f"GET {executions}{query}" if not query else query, get(api, executions + query))
        for query in API_LIST_QUERIES
    ]
    requests[0] = ("GET /api/v1/executions (default)", requests[0][1])
    requests += [
        ("?type=pipeline&status=completed", get(api, f"{executions}?type=pipeline&status=completed")),
        ("page 50", get(api, f"{executions}?page=50")),
        ("last page", get(api, f"{executions}?page={max(1, -(-total // 20))}")),
    ]
    figures: list[Figure] = []
    for label, request in requests:
        figures.append(timed(label, request, repeat))
        log(_row(figures[-1]))
    figures.append(_cursor_walk(api, repeat))
    log(_row(figures[-1]))
    admin_executions = "/admin/executions/execution/"
    more = [
        ("GET /api/v1/executions/{id}", get(api, f"{executions}/{execution}")),
        ("threads search (default)", post("/threads/search", {"limit": 10})),
        (
            "threads search by a metadata key",
            post("/threads/search", {"metadata": {"user_id": "user-42"}, "limit": 10}),
        ),
        ("threads search, status=busy", post("/threads/search", {"status": "busy", "limit": 10})),
        ("threads search, sort_by=updated_at", post("/threads/search", {"sort_by": "updated_at", "limit": 10})),
        ("threads search, offset 10,000", post("/threads/search", {"limit": 10, "offset": 10_000})),
        ("threads count by a metadata key", post("/threads/count", {"metadata": {"user_id": "user-42"}})),
        ("runs of a thread", get(api, f"/threads/{thread}/runs")),
        ("admin: executions", get(staff, admin_executions)),
        ("admin: executions ?status=failed", get(staff, f"{admin_executions}?status__exact=failed")),
        ("admin: executions search target", get(staff, f"{admin_executions}?q=summarize")),
        ("admin: executions search id prefix", get(staff, f"{admin_executions}?q={str(execution)[:8]}")),
        ("admin: runs", get(staff, "/admin/runs/run/")),
        ("admin: runs ?status=error", get(staff, "/admin/runs/run/?status__exact=error")),
        ("admin: runs search id", get(staff, f"/admin/runs/run/?q={big_run}")),
        ("admin: threads", get(staff, "/admin/runs/thread/")),
        ("admin: threads search id", get(staff, f"/admin/runs/thread/?q={thread}")),
        ("admin: execution with 5,000 events", get(staff, f"{admin_executions}{big_execution}/change/")),
        ("admin: run with 5,000 events", get(staff, f"/admin/runs/run/{big_run}/change/")),
    ]
    for label, request in more:
        figures.append(timed(label, request, repeat))
        log(_row(figures[-1]))
    return figures


def _cursor_walk(api: Any, repeat: int) -> Figure:
    """Follow ``next`` links from the first page: the cost of any page in cursor mode."""
    label = "cursor: next pages"
    response = api.get("/api/v1/executions?cursor=")
    if response.status_code != 200 or "next" not in response.json():
        return Figure(label, float("nan"), float("nan"), response.status_code, "no cursor mode")
    samples = []
    url = response.json()["next"]
    read = rows_read(lambda: api.get(url))
    for _ in range(max(repeat, 10)):
        if not url:
            break
        start = time.perf_counter()
        response = api.get(url)
        samples.append((time.perf_counter() - start) * 1000)
        url = response.json()["next"]
    return Figure(label, statistics.median(samples), _p95(samples), response.status_code, rows_read=read)


def _row(figure: Figure) -> str:
    note = f"  {figure.note}" if figure.note else ""
    read = "" if figure.rows_read is None else f"{figure.rows_read:,}"
    return (
        f"| {figure.label} | {figure.p50_ms:,.1f} ms | {figure.p95_ms:,.1f} ms | {read} | "
        f"{figure.status} |{note}"
    )


# --- pruning ---------------------------------------------------------------------------------------


def measure_prune(database_url: str | None) -> dict[str, Any]:
    """`manage.py executions prune` on the executions older than 45 days (half the data set):
    wall time and the command's peak RSS."""
    from executions.models import Execution

    before = Execution.objects.count()
    env = dict(os.environ)
    if database_url:
        env["DATABASE_URL"] = database_url
    began = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "manage.py", "executions", "prune", "--older-than", str(DAYS / 2)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600, check=False,
    )
    elapsed = time.monotonic() - began
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    after = Execution.objects.count()
    return {
        "deleted": before - after,
        "seconds": round(elapsed, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "exit_status": completed.returncode,
        "output": (completed.stdout + completed.stderr).strip().splitlines()[-3:],
    }


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="executions (threads: /5, runs: /2)")
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per line (default 20)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--reuse", action="store_true", help="keep a data set of the same size")
    parser.add_argument("--prune", action="store_true", help="also time pruning half the executions")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    if args.size < 1000:
        parser.error("--size must be at least 1000")
    database_url = bench_database_url(args.database_url)
    configure(database_url)
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    from django.db import connection

    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}, size {args.size:,}")
    if args.reuse and dataset_size() is not None and _loaded_size() == args.size:
        print("reusing the loaded data set")
        api_key = fresh_api_key()
    else:
        api_key = load(args.size)["api_key"]
    print("\n| request | p50 | p95 | rows read | status |\n|---|---|---|---|---|")
    figures = measure(api_key=api_key, repeat=args.repeat)
    result: dict[str, Any] = {"size": args.size, "vendor": connection.vendor, "figures": [f.__dict__ for f in figures]}
    if args.prune:
        result["prune"] = measure_prune(database_url)
        print(f"\nprune: {json.dumps(result['prune'])}")
    if args.json:
        print(json.dumps(result, default=str))
    return 0 if all(f.status == 200 or f.note for f in figures) else 1


def _loaded_size() -> int:
    from executions.models import Execution

    # Every tenth execution belongs to the other user; the big execution adds none.
    return Execution.objects.count()


if __name__ == "__main__":
    sys.exit(main())
