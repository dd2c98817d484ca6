"""Settings, all from the environment.

Embedded default: SQLite (WAL, IMMEDIATE transactions) and the django-q2 ORM broker, nothing else
to run. ``DATABASE_URL`` switches to PostgreSQL, ``REDIS_URL`` switches the broker and the cache
to Redis.
"""

import os
import secrets
import sys
from pathlib import Path

import dj_database_url

from project.booleans import parse_bool

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATA_DIR", BASE_DIR / "var"))
DATA_DIR.mkdir(parents=True, exist_ok=True)

# prometheus_client picks its multiprocess mode from this variable when first imported: set here,
# before any app imports it, and inherited by every process started from this one (workers).
PROMETHEUS_MULTIPROC_DIR = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or DATA_DIR / "prometheus")
PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_MULTIPROC_DIR)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return parse_bool(value)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _secret_key() -> str:
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    # Embedded mode: one random key per data directory, so sessions survive restarts.
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "*").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

# Behind TLS (directly or via a proxy that sets X-Forwarded-Proto): secure cookies, redirect, HSTS.
HTTPS = env_bool("HTTPS", False)
if HTTPS:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Probes and scrapers call the pod or host directly over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 3600)
    # On by default so `check --deploy` is clean; the header alone submits nothing to browsers'
    # preload list. Turn off when some subdomain still serves plain HTTP.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)

INSTALLED_APPS = [
    "operations.apps.OperationsAdminConfig",  # django.contrib.admin, its index the operations page
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "checkpoints",
    "store",
    "executions",
    "runs",
    "webhooks",
    "operations",
    "schedules",
    # After executions: an app listed earlier wins a management command's name, and
    # executions' `qcluster` (executions.cluster) replaces django-q2's.
    "django_q",
]

MIDDLEWARE = [
    "project.request_log.RequestLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, and sync-only: under ASGI every middleware above then runs in sync mode in the
    # request's one thread. Placed above async-capable ones it made each of them hop to a thread
    # and back for its process_request and process_response (Django's MiddlewareMixin), ten
    # extra thread switches per request. It still runs before any view reads the body.
    "project.api.middleware.RequestBodyLimitMiddleware",
    "project.api.middleware.StorableInputMiddleware",
]

ROOT_URLCONF = "project.urls"
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BODY_BYTES", 1024 * 1024)
# JSON bodies nested deeper than this are refused (400/422): Python's parser, and every walk of a
# value after it, fails at about a thousand levels. Keep it well below that.
MAX_JSON_DEPTH = env_int("MAX_JSON_DEPTH", 100)
CSRF_FAILURE_VIEW = "project.api.errors.csrf_failure"
# A redirect would turn an API POST into a GET; the API answers both spellings itself.
APPEND_SLASH = False
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------------

IS_WORKER = len(sys.argv) > 1 and sys.argv[1] == "qcluster"

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "db.sqlite3"),
            # A file, not memory, so worker subprocesses in tests share it; one per test process
            # so parallel test runs on one machine do not trample each other.
            "TEST": {"NAME": str(DATA_DIR / f"test_db_{os.getpid()}.sqlite3")},
        }
    }

_db = DATABASES["default"]
if _db["ENGINE"] in ("django.db.backends.sqlite3", "project.db.sqlite_backend"):
    _db["ENGINE"] = "project.db.sqlite_backend"
    _db.setdefault("OPTIONS", {}).update(
        {
            # IMMEDIATE takes the write lock at BEGIN, so two writers queue on busy_timeout
            # instead of failing with "database is locked" when a read transaction upgrades.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": (
                "PRAGMA journal_mode=WAL;"
                "PRAGMA synchronous=NORMAL;"
                "PRAGMA busy_timeout=20000;"
            ),
        }
    )
    _db["CONN_MAX_AGE"] = 0 if not IS_WORKER else 600
elif _db["ENGINE"] == "django.db.backends.postgresql":
    if IS_WORKER or not env_bool("DATABASE_POOL", True):
        # Workers are long-lived and single-threaded: a persistent connection each is cheapest.
        _db["CONN_MAX_AGE"] = env_int("CONN_MAX_AGE", 600)
        _db["CONN_HEALTH_CHECKS"] = True
    else:
        # ASGI runs sync views in threads; a pool bounds connections and avoids a connect per
        # request (persistent connections are not safe to share across ASGI threads).
        _db["CONN_MAX_AGE"] = 0
        # Makes the pool check a connection before lending it: after a PostgreSQL restart it
        # would otherwise hand out dead connections, one failed request each.
        _db["CONN_HEALTH_CHECKS"] = True
        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN", 2),
            "max_size": env_int("DATABASE_POOL_MAX", 20),
            "timeout": 10,
        }
    _db.setdefault("TEST", {}).setdefault("NAME", f"test_{_db['NAME']}_{os.getpid()}")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and broker -----------------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            # Django builds a cache client per thread, and under ASGI each request has a thread
            # of its own: without a shared pool every request opened a new Redis connection.
            "OPTIONS": {"pool_class": "project.realtime.redis_pool.SharedConnectionPool"},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

EXECUTIONS_TIMEOUT = env_int("EXECUTIONS_TIMEOUT", 3600)

Q_CLUSTER = {
    "name": os.environ.get("Q_CLUSTER_NAME", "agentjobs"),
    "workers": env_int("Q_WORKERS", 2),
    "timeout": EXECUTIONS_TIMEOUT,
    # django-q2 requires retry > timeout, else a long task is redelivered while still running.
    "retry": EXECUTIONS_TIMEOUT + 60,
    # Our row counts attempts; django-q2 must not redeliver a failed task on its own.
    "max_attempts": 1,
    "ack_failures": True,
    # The execution row is the record of truth; django-q2's Success table would only grow.
    "save_limit": -1,
    "catch_up": False,
    "poll": env_float("Q_POLL", 0.05),
    "bulk": env_int("Q_BULK", 1),
    # Tasks before a worker process is replaced by a new one, which loads its graphs and opens its
    # connections again (~0.1 s of CPU): django-q2's default of 500 cost 0.2 ms a run.
    "recycle": env_int("Q_RECYCLE", 10000),
    "label": "Django Q2",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
    # django-q2's Redis broker, taking each message so that a worker killed meanwhile loses none.
    Q_CLUSTER["broker_class"] = "project.redis_broker.RedisBroker"
else:
    Q_CLUSTER["orm"] = "default"
    # The ORM broker whose pushers are woken by a local datagram on enqueue (LOCAL_WAKEUPS_DIR).
    Q_CLUSTER["broker_class"] = "project.orm_broker.ORMBroker"
    # Each cluster saves its status (host, pids, a timestamp) to django-q2's cache every half
    # second; /readyz, /metrics and the dashboard read it from the API process. The default local
    # memory cache is private to a process, so without Redis the statuses go to files instead.
    CACHES["cluster_status"] = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(DATA_DIR / "cluster_status"),
    }
    Q_CLUSTER["cache"] = "cluster_status"

# Without Redis, processes of this machine wake each other (a worker's pusher on enqueue, stream
# readers and /wait on a run's changes) through Unix datagram sockets in this directory; empty
# turns that off, leaving the database polls alone. Only hints: the polls stay as the safety net.
LOCAL_WAKEUPS_DIR = os.environ.get("LOCAL_WAKEUPS_DIR", str(DATA_DIR / "wakeups"))

# --- Apps ------------------------------------------------------------------------------------------

# Seconds between progress writes of one execution; step changes are always written.
EXECUTIONS_PROGRESS_INTERVAL = env_float("EXECUTIONS_PROGRESS_INTERVAL", 0.2)
# Seconds between heartbeats of a running execution.
EXECUTIONS_HEARTBEAT_INTERVAL = env_float("EXECUTIONS_HEARTBEAT_INTERVAL", 5.0)
# A running execution whose heartbeat is older than this lost its worker (seconds).
EXECUTIONS_HEARTBEAT_TIMEOUT = env_float("EXECUTIONS_HEARTBEAT_TIMEOUT", 30.0)
# Claims allowed before a job whose worker keeps dying is failed (config.max_attempts overrides).
EXECUTIONS_MAX_ATTEMPTS = env_int("EXECUTIONS_MAX_ATTEMPTS", 3)
# A pending execution this old while the broker queue is empty is enqueued again (seconds).
EXECUTIONS_REQUEUE_AFTER = env_float("EXECUTIONS_REQUEUE_AFTER", 30.0)
# Seconds between recovery sweeps in each worker process (0 turns them off).
EXECUTIONS_SWEEP_INTERVAL = env_float("EXECUTIONS_SWEEP_INTERVAL", 5.0)
# Finished executions older than this many days are deleted by the workers' sweep (0: kept
# forever; `manage.py executions prune` deletes on demand), checked every RETENTION_INTERVAL s.
EXECUTIONS_RETENTION_DAYS = env_float("EXECUTIONS_RETENTION_DAYS", 0.0)
EXECUTIONS_RETENTION_INTERVAL = env_float("EXECUTIONS_RETENTION_INTERVAL", 300.0)
# A worker idle in its read of the broker this long (seconds) is wedged: its cluster replaces it.
EXECUTIONS_WORKER_STALL_TIMEOUT = env_float("EXECUTIONS_WORKER_STALL_TIMEOUT", 30.0)
# Pending + running executions one user may have at once (429 beyond); 0 = no limit.
EXECUTIONS_MAX_ACTIVE_PER_USER = env_int("EXECUTIONS_MAX_ACTIVE_PER_USER", 1000)
# Running executions per user; more wait pending and start as theirs end (0 = no limit).
EXECUTIONS_MAX_RUNNING_PER_USER = env_int("EXECUTIONS_MAX_RUNNING_PER_USER", 0)
# Seconds between cancellation checks made by ctx.cancelled / ctx.sleep.
EXECUTIONS_CANCEL_CHECK_INTERVAL = env_float("EXECUTIONS_CANCEL_CHECK_INTERVAL", 0.2)

# Open event streams (SSE) one user may hold at once, across all server processes (429 beyond).
STREAMS_MAX_PER_USER = env_int("STREAMS_MAX_PER_USER", 100)

# --- Runs (LangGraph-compatible API) -------------------------------------------------------------

# Graph id -> "module:attr" or "/path/file.py:attr"; a langgraph.json named by LANGGRAPH_CONFIG
# adds to (and overrides) these.
RUNS_GRAPHS = {
    "echo": "runs.demo_graphs:echo",
    "hitl": "runs.demo_graphs:hitl",
    "steps": "runs.demo_graphs:steps",
    "chat": "runs.demo_graphs:chat",
    "nested": "runs.demo_graphs:nested",
}
RUNS_CANCEL_CHECK_INTERVAL = env_float("RUNS_CANCEL_CHECK_INTERVAL", 0.2)
RUNS_HEARTBEAT_INTERVAL = env_float("RUNS_HEARTBEAT_INTERVAL", 2.0)
# A running run whose heartbeat is older than this lost its worker and ends "error" (seconds).
RUNS_HEARTBEAT_TIMEOUT = env_float("RUNS_HEARTBEAT_TIMEOUT", 30.0)
# A run still going after this many seconds ends "timeout" (below the django-q2 task timeout).
RUNS_TIMEOUT = env_int("RUNS_TIMEOUT", EXECUTIONS_TIMEOUT - 30)
# after_seconds up to this is waited inside the worker; longer delays go to django-q2's scheduler.
RUNS_MAX_DELAY_IN_WORKER = env_float("RUNS_MAX_DELAY_IN_WORKER", 30)
# How often /wait and /join look for the run's end.
RUNS_WAIT_POLL_INTERVAL = env_float("RUNS_WAIT_POLL_INTERVAL", 0.025)
# Pending + running runs one user may have at once (429 beyond); 0 = no limit.
RUNS_MAX_ACTIVE_PER_USER = env_int("RUNS_MAX_ACTIVE_PER_USER", 1000)
# Graph runs one worker process runs at once on its event loop (executions.worker_loop); 1 runs
# them one at a time in the worker's thread, as django-q2 runs any task.
RUNS_CONCURRENCY_PER_WORKER = env_int("RUNS_CONCURRENCY_PER_WORKER", 10)
# Executions of ``async def`` agents and pipelines one worker process runs at once on that loop
# (sync targets run one at a time in the worker's own thread).
EXECUTIONS_CONCURRENCY_PER_WORKER = env_int("EXECUTIONS_CONCURRENCY_PER_WORKER", 10)
# On stop (SIGTERM to the cluster), seconds a worker lets its jobs in flight finish before it
# gives what is left back to the queue.
WORKER_GRACE_SECONDS = env_float("WORKER_GRACE_SECONDS", 30.0)
# A job blocking its worker's event loop this long (seconds) is logged with its graph and node.
WORKER_LOOP_BLOCK_WARN_SECONDS = env_float("WORKER_LOOP_BLOCK_WARN_SECONDS", 3.0)
# Largest metadata (and run config) of an assistant, thread or run, as compact JSON (422 beyond).
METADATA_MAX_BYTES = env_int("METADATA_MAX_BYTES", 64 * 1024)

# --- Operations (health probes, metrics, dashboard) -----------------------------------------------

# Bearer token that GET /metrics asks of requests not from loopback; empty: loopback and staff only.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
# Off: /readyz leaves the workers out (API processes whose workers are scaled on their own).
HEALTH_REQUIRE_WORKERS = env_bool("HEALTH_REQUIRE_WORKERS", True)

# --- CORS -----------------------------------------------------------------------------------------

# Off unless configured: "*" for any origin, or a comma-separated list. Browser clients
# (LangGraph Studio, Agent Chat UI, useStream) need it, and the headers they read exposed.
_cors_origins = [o.strip() for o in os.environ.get("CORS_ALLOWED_ORIGINS", "").split(",") if o.strip()]
CORS_ALLOW_ALL_ORIGINS = _cors_origins == ["*"]
CORS_ALLOWED_ORIGINS = [] if CORS_ALLOW_ALL_ORIGINS else _cors_origins
CORS_EXPOSE_HEADERS = [
    "Content-Location", "Location", "X-Pagination-Total", "X-Pagination-Next",
    "Idempotent-Replayed", "Retry-After",
]
CORS_ALLOW_HEADERS = [
    "accept", "authorization", "content-type", "user-agent", "x-api-key", "x-csrftoken",
    "x-requested-with", "last-event-id", "idempotency-key", "cache-control",
]
CORS_ALLOW_PRIVATE_NETWORK = True

# --- REST framework -------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "project.api.auth.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "project.api.parsers.AnyContentTypeJSONParser",
    ],
    "DEFAULT_RENDERER_CLASSES": ["project.api.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "project.api.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Create endpoints are throttled per user through the shared cache (Redis when configured).
    "DEFAULT_THROTTLE_RATES": {"create": os.environ.get("API_CREATE_RATE", "6000/min")},
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Agent Jobs API",
    "DESCRIPTION": "Run agents and pipelines in the background; LangGraph-compatible runs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Executions keep their "StatusEnum" beside the webhooks' status.
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "executions.models.ExecutionStatus",
        "WebhookStatusEnum": "webhooks.models.WebhookStatus",
    },
    # The LangGraph operations we document are OpenAPI 3.1 (JSON Schema 2020-12) documents.
    "OAS_VERSION": "3.1.0",
    "PREPROCESSING_HOOKS": ["runs.openapi.exclude_runs_views"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "project.openapi.strip_optional_trailing_slash",
        "project.openapi.document_plain_views",
        "runs.openapi.add_langgraph_operations",
        "project.openapi.document_auth_and_limits",
        "project.openapi.nullable_as_any_of",
    ],
    "SECURITY": [{"ApiKeyAuth": []}, {"BearerAuth": []}],
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "BearerAuth": {"type": "http", "scheme": "bearer"},
        }
    },
}

# --- Webhooks (completion callbacks of executions and runs) ---------------------------------------

# The Standard Webhooks signing secret ("whsec_" + base64); empty sends webhooks unsigned.
WEBHOOK_SECRET = os.environ.get("WEBHOOK_SECRET", "")
# Seconds one delivery attempt may take (connect + response).
WEBHOOK_TIMEOUT = env_float("WEBHOOK_TIMEOUT", 10.0)
# Attempts before a webhook is given up; the n-th retry waits WEBHOOK_RETRY_BACKOFF * 2**(n-1)
# seconds (60 s: retries 1, 3, 7 and 15 minutes after the first attempt).
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 5)
WEBHOOK_RETRY_BACKOFF = env_float("WEBHOOK_RETRY_BACKOFF", 60.0)
# Threads per worker process that send webhooks, beside (not in) the worker's job slot.
WEBHOOK_SENDER_THREADS = env_int("WEBHOOK_SENDER_THREADS", 4)
# Characters of a receiver's response body kept with each attempt.
WEBHOOK_RESPONSE_PREFIX = env_int("WEBHOOK_RESPONSE_PREFIX", 500)
# Off: webhook URLs resolving to loopback, private or link-local addresses are refused (at create
# and again before each attempt), so a user cannot make the workers call internal services.
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)

# --- Static files, i18n ---------------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve straight from app folders so `make run` needs no collectstatic step.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGIN_URL = "admin:login"

# LOG_FORMAT=json: one JSON object per line (project.log_format); else one readable line each.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "project.log_format.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "text",
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
    "loggers": {
        "django_q": {"level": os.environ.get("Q_LOG_LEVEL", "WARNING"), "propagate": True},
        # One line per HTTP request (agentjobs.http) and per job start and end (agentjobs.jobs);
        # ACCESS_LOG=0 silences both.
        "agentjobs": {"level": "INFO" if env_bool("ACCESS_LOG", True) else "WARNING"},
        # Its "Not Found: /x" and "Bad Request" lines repeat the request's line above; 5xx stay.
        **({"django.request": {"level": "ERROR"}} if env_bool("ACCESS_LOG", True) else {}),
    },
}
