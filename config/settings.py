"""Django settings.

Every environment variable the project reads is read here, once, with an
embedded default that works on a laptop: SQLite in ``var/`` and Redis on
localhost. Production sets ``DATABASE_URL``, ``CELERY_BROKER_URL``,
``SECRET_KEY`` and ``ALLOWED_HOSTS``. ``DEBUG`` is off unless set: a laptop
sets ``DEBUG=1`` (``make run`` and ``make demo`` do), a deployment that forgets
it gets the HTTPS-only defaults (see "HTTPS" below), no development key, no
``*`` hosts, no failure injection and no open ``/metrics``.
"""
import json
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SAGAS_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


DEV_SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"
SECRET_KEY_MIN_LENGTH = 50


def secret_key_problem(key: str) -> str | None:
    """Why ``key`` must not sign production sessions and tokens, or None."""
    if not key:
        return "is not set"
    if key == DEV_SECRET_KEY or key.startswith("django-insecure"):
        return "is the development key"
    if len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < 5:
        return f"is too weak ({len(key)} characters, {len(set(key))} different)"
    return None


def env_rate(name: str, default: str) -> str | None:
    """A DRF throttle rate (``"120/minute"``); ``off`` (or ``0``, ``none``) turns that throttle off."""
    value = os.environ.get(name, "").strip() or default
    return None if value.lower() in {"off", "0", "none"} else value


def proxy_ssl_header(value: str) -> tuple[str, str] | None:
    """``X-Forwarded-Proto=https`` -> ``("HTTP_X_FORWARDED_PROTO", "https")``; blank -> None."""
    if not value.strip():
        return None
    name, sep, expected = value.partition("=")
    name, expected = name.strip(), expected.strip()
    if not sep or not name or not expected:
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER must look like X-Forwarded-Proto=https, not {value!r}")
    meta = name.upper().replace("-", "_")
    return (meta if meta.startswith("HTTP_") else f"HTTP_{meta}", expected)


DEBUG = env_bool("DEBUG", False)

# --- Secret key ---------------------------------------------------------------
# Production (DEBUG off) refuses to start with the development key or a weak
# one (Django's own bar: 50 characters, 5 different ones), rather than warn.
SECRET_KEY = os.environ.get("SECRET_KEY", "") or (DEV_SECRET_KEY if DEBUG else "")
if not DEBUG and (problem := secret_key_problem(SECRET_KEY)):
    raise ImproperlyConfigured(
        f"SECRET_KEY {problem}: with DEBUG off it must be at least {SECRET_KEY_MIN_LENGTH} random "
        "characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))'")
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "*" if DEBUG else "").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# --- HTTPS ----------------------------------------------------------------------
# With DEBUG off, HTTPS only: plain HTTP is redirected, cookies are marked
# Secure, and browsers are told (HSTS) to use HTTPS for a year, subdomains
# included, preload allowed. With DEBUG on (a laptop), none of it. Each can be
# overridden.
# Behind a proxy that terminates TLS, SECURE_PROXY_SSL_HEADER names the header
# the proxy sets on HTTPS requests (only set it if the proxy always sets or
# strips that header, or clients could claim HTTPS themselves).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = int(env_float("SECURE_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_PROXY_SSL_HEADER = proxy_ssl_header(os.environ.get("SECURE_PROXY_SSL_HEADER", ""))

INSTALLED_APPS = [
    "config.apps.OrchestratorAdminConfig",  # django.contrib.admin, with the project's site (config/admin.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "sagas",
    "corporate",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Errors Django answers itself under /api/ get the API's JSON shape (sagas.api.exceptions).
    "sagas.api.exceptions.ApiErrorMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "config" / "templates"],  # the project's own pages (the landing page)
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

# --- Database -------------------------------------------------------------
# SQLite is the embedded default. WAL lets readers run beside the one writer,
# the busy timeout makes writers wait instead of failing, and IMMEDIATE
# transactions take the write lock up front so two workers never deadlock
# upgrading a read lock.
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
# Connections are kept for CONN_MAX_AGE seconds (between requests, and between
# tasks in a worker: see CELERY_DB_REUSE_MAX) and checked before reuse.
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=int(env_float("CONN_MAX_AGE", 60)),
                                              conn_health_checks=True)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Django's, writing datetimes to the millisecond as SQLite's own clock does (see its docstring).
    DATABASES["default"]["ENGINE"] = "config.backends.sqlite3"
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so that worker processes share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test_db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- REST API -----------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: any other body answers 415 (sagas.api.parsers bounds its size and depth).
    "DEFAULT_PARSER_CLASSES": ["sagas.api.parsers.BoundedJSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["sagas.api.throttles.ApiUserThrottle"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # Proxies in front whose X-Forwarded-For is trusted for the client address (throttles).
    "NUM_PROXIES": int(env_float("SAGAS_NUM_PROXIES", 0)),
    "DEFAULT_PAGINATION_CLASS": "sagas.api.pagination.SagaPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "sagas.api.schema.ApiSchema",  # drf-spectacular's, with the 413/415/429 answers
    "EXCEPTION_HANDLER": "sagas.api.exceptions.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Saga orchestrator API",
    "DESCRIPTION": "Start, watch and steer sagas run by the Django/Celery orchestrator.",
    "VERSION": "1.0.0",
    # Swagger UI and ReDoc from static files, not a CDN: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The POST /api/sagas/ body, one schema per saga type, generated from each definition's input serializer.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "sagas.api.schema.saga_start_bodies"],
}

# --- Limits: what one request may cost ------------------------------------------
# A request body over this many bytes answers 413 before it is parsed; JSON nested deeper
# than SAGAS_MAX_INPUT_DEPTH answers 400.
SAGAS_MAX_INPUT_BYTES = int(env_float("SAGAS_MAX_INPUT_BYTES", 1024 * 1024))
SAGAS_MAX_INPUT_DEPTH = int(env_float("SAGAS_MAX_INPUT_DEPTH", 32))
# Throttles (DRF rates, "N/second|minute|hour|day"; "off" turns one off), answering 429 with
# Retry-After, counted in the shared cache: per user on the authenticated API, per client
# address on the token endpoints (/api/signals/{token}/...), which need no credentials.
SAGAS_API_THROTTLE_RATE = env_rate("SAGAS_API_THROTTLE_RATE", "1200/minute")
SAGAS_SIGNAL_THROTTLE_RATE = env_rate("SAGAS_SIGNAL_THROTTLE_RATE", "60/minute")
# POST /api/auth/token/ (a token for a username and password), per client address too.
SAGAS_AUTH_THROTTLE_RATE = env_rate("SAGAS_AUTH_THROTTLE_RATE", "60/minute")
# The analytics API answers for a window of at most this many seconds (31 days).
SAGAS_ANALYTICS_MAX_WINDOW = env_float("SAGAS_ANALYTICS_MAX_WINDOW", 31 * 24 * 3600)
# The saga types of saga_bench (sagas.bench*) and saga_chaos (sagas.chaos*) exist only in
# processes that set these (the commands set them for themselves and the workers they start):
# one request to sagas.bench.p1000 would write a thousand step rows.
SAGAS_BENCH_SAGAS = env_bool("SAGAS_BENCH_SAGAS", False)
SAGAS_CHAOS_SAGAS = env_bool("SAGAS_CHAOS_SAGAS", False)
# Retention: beat runs saga_prune's work every SAGAS_PRUNE_INTERVAL seconds for the sagas
# finished (failed ones kept) more than SAGAS_PRUNE_AFTER_DAYS days ago; 0: never.
SAGAS_PRUNE_AFTER_DAYS = env_float("SAGAS_PRUNE_AFTER_DAYS", 0)
SAGAS_PRUNE_INTERVAL = env_float("SAGAS_PRUNE_INTERVAL", 3600)

# --- Celery -------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TASK_IGNORE_RESULT = CELERY_RESULT_BACKEND is None
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
# At least once: acknowledge after the task ran, re-queue when a worker dies.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fix-up closes every database connection before and after
# every task unless this is set: each step would open a connection (a new
# PostgreSQL backend, or a SQLite file with its pragmas) of its own. Workers
# keep them instead and, as Django does between requests, close one that
# broke or grew older than CONN_MAX_AGE before each task (sagas.tasks).
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis re-delivers a message a dead worker had reserved only after this many
# seconds; keep it above the longest step timeout (the sweeper covers the gap).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(env_float("CELERY_VISIBILITY_TIMEOUT", 3600)),
}
# Task events for Flower.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True

# --- Sagas --------------------------------------------------------------------
# The timeout of one attempt of a step that declares none (seconds).
SAGAS_DEFAULT_STEP_TIMEOUT = env_float("SAGAS_DEFAULT_STEP_TIMEOUT", 300.0)
# The hard time limit is the soft limit (the step's timeout) plus this.
SAGAS_HARD_TIMEOUT_GRACE = env_float("SAGAS_HARD_TIMEOUT_GRACE", 5.0)
# The sweeper re-sends a saga's work when no attempt holds it and nothing has
# moved it for this long (each further resend waits twice as long).
SAGAS_STALL_AFTER = env_float("SAGAS_STALL_AFTER", 15.0)
# Beat runs the sweeper this often (one indexed query when nothing is due).
SAGAS_SWEEP_INTERVAL = env_float("SAGAS_SWEEP_INTERVAL", 5.0)
# A forward or compensation chain holds at most this many steps; a task at its end sends the next
# segment (every message carries the rest of its chain: a longer one costs bytes with every step).
SAGAS_CHAIN_SEGMENT = int(env_float("SAGAS_CHAIN_SEGMENT", 20))
# Child sagas (ChildSaga) nest this deep at most: a step that would start a child deeper fails for good.
SAGAS_MAX_DEPTH = int(env_float("SAGAS_MAX_DEPTH", 5))
# A key a user sends with a start (Idempotency-Key) answers that user's saga for this long (seconds).
SAGAS_IDEMPOTENCY_TTL = env_float("SAGAS_IDEMPOTENCY_TTL", 24 * 3600)
# A waiting step's token works this long at most, deadline or not (seconds).
SAGAS_SIGNAL_TOKEN_TTL = env_float("SAGAS_SIGNAL_TOKEN_TTL", 30 * 24 * 3600)
# Beat's sweep messages expire if no worker takes them within this many seconds.
SAGAS_SWEEP_EXPIRES = env_float("SAGAS_SWEEP_EXPIRES", 60.0)
# One sweep at a time: a sweep that dies holds the sweeper's lease this long at most (seconds).
SAGAS_SWEEP_LEASE = env_float("SAGAS_SWEEP_LEASE", 60.0)
# Every worker process that runs steps heartbeats this often (0: never); an
# attempt whose worker has not for SAGAS_WORKER_DEAD_AFTER seconds is lost at once.
SAGAS_HEARTBEAT_INTERVAL = env_float("SAGAS_HEARTBEAT_INTERVAL", 2.0)
SAGAS_WORKER_DEAD_AFTER = env_float("SAGAS_WORKER_DEAD_AFTER", 10.0)
# PostgreSQL: the engine's hot statements are prepared on the server, once per
# connection. Turn off (0) behind a pooler that cannot keep prepared
# statements: PgBouncer in transaction mode before 1.21.
SAGAS_PREPARED_STATEMENTS = env_bool("SAGAS_PREPARED_STATEMENTS", True)
# Bulk actions (sagas.bulk): each batch acts on this many sagas in one transaction (their locks are
# held that long); a running job whose last batch is older than SAGAS_BULK_STALE_AFTER seconds is
# sent again by beat's check, which runs every SAGAS_BULK_CHECK_INTERVAL seconds.
SAGAS_BULK_BATCH_SIZE = int(env_float("SAGAS_BULK_BATCH_SIZE", 200))
SAGAS_BULK_STALE_AFTER = env_float("SAGAS_BULK_STALE_AFTER", 60.0)
SAGAS_BULK_CHECK_INTERVAL = env_float("SAGAS_BULK_CHECK_INTERVAL", 30.0)
# --- Failure injection (demos and staging) -----------------------------------------
# Off unless DEBUG or switched on explicitly: production never injects by accident.
SAGAS_FAILURE_INJECTION_ENABLED = env_bool("SAGAS_FAILURE_INJECTION_ENABLED", DEBUG)
# {"saga.type" or "*": {"step" or "*": {"transient": p, "permanent": p, "seed": n}}}
SAGAS_FAILURE_INJECTION = json.loads(os.environ.get("SAGAS_FAILURE_INJECTION") or "{}")
# How long a process keeps the stored (run-time) rules before reading them again.
SAGAS_FAILURE_INJECTION_CACHE_SECONDS = env_float("SAGAS_FAILURE_INJECTION_CACHE_SECONDS", 1.0)

# --- Oversight: the live page, /metrics, alerts ----------------------------------------
# The live page's watcher looks for changes this often (seconds), once per server process.
SAGAS_LIVE_INTERVAL = env_float("SAGAS_LIVE_INTERVAL", 1.0)
# Its counts cover the sagas created in this many seconds before now; its lists hold this many rows.
SAGAS_LIVE_WINDOW = int(env_float("SAGAS_LIVE_WINDOW", 24 * 3600))
SAGAS_LIVE_ROWS = int(env_float("SAGAS_LIVE_ROWS", 50))
# /metrics: a scraper sends "Authorization: Bearer <token>". Without a token
# only loopback clients are answered, and only with DEBUG on.
SAGAS_METRICS_TOKEN = os.environ.get("SAGAS_METRICS_TOKEN", "")
# A scrape's figures are computed at most once per this many seconds (kept in the shared cache); 0: every scrape.
SAGAS_METRICS_CACHE_SECONDS = env_float("SAGAS_METRICS_CACHE_SECONDS", 15.0)
# The landing page (/) links Flower here; empty: port 5555 of the host the page was asked for. And the
# guide, when it is served somewhere (empty: the page points to README.md and docs/, which make docs serves).
SAGAS_FLOWER_URL = os.environ.get("SAGAS_FLOWER_URL", "")
SAGAS_DOCS_URL = os.environ.get("SAGAS_DOCS_URL", "")
# A saga that becomes failed is logged at ERROR and mailed to ADMINS, at most
# one mail per saga type per this many seconds (the others are counted in the next).
# Django's own error mails (a 500) follow the same limit, per kind of error.
SAGAS_ALERT_MAIL_INTERVAL = env_float("SAGAS_ALERT_MAIL_INTERVAL", 15 * 60)
# ADMINS="Ops <ops@example.com>,dev@example.com"
ADMINS = [(a.partition("<")[0].strip() or a.strip(), a.partition("<")[2].rstrip(">").strip() or a.strip())
          for a in os.environ.get("ADMINS", "").split(",") if a.strip()]
SERVER_EMAIL = os.environ.get("SERVER_EMAIL", "sagas@localhost")
DEFAULT_FROM_EMAIL = SERVER_EMAIL
EMAIL_SUBJECT_PREFIX = os.environ.get("EMAIL_SUBJECT_PREFIX", "[sagas] ")
# On a laptop mails go to the worker's log; production sets an SMTP server.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND") or (
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(env_float("EMAIL_PORT", 25))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 10
# The alert's rate limit must hold across worker processes and machines: a
# shared cache (Redis by default; "locmem://" keeps it per process).
CACHE_URL = os.environ.get("CACHE_URL", "redis://127.0.0.1:6379/1")
CACHES = {"default": (
    {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"} if CACHE_URL.startswith("locmem")
    else {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL,
          "KEY_PREFIX": os.environ.get("CACHE_KEY_PREFIX", "sagas")})}

CELERY_BEAT_SCHEDULE = {
    # A sweep message not taken within SAGAS_SWEEP_EXPIRES is dropped: while no worker takes them (all
    # down, or busy behind a backlog) they never pile up by more than a few; a shorter expiry would
    # drop every sweep while the queue is backed up, just when lost messages need one.
    "sagas-sweep": {"task": "sagas.sweep", "schedule": SAGAS_SWEEP_INTERVAL,
                    "options": {"expires": SAGAS_SWEEP_EXPIRES}},
    # Bulk jobs whose worker died (or whose next batch's message was lost) go on from their cursor.
    "sagas-bulk-actions": {"task": "sagas.resume_bulk_actions", "schedule": SAGAS_BULK_CHECK_INTERVAL,
                           "options": {"expires": SAGAS_BULK_CHECK_INTERVAL}},
}
if SAGAS_PRUNE_AFTER_DAYS > 0:
    CELERY_BEAT_SCHEDULE["sagas-prune"] = {"task": "sagas.prune", "schedule": SAGAS_PRUNE_INTERVAL,
                                           "options": {"expires": SAGAS_PRUNE_INTERVAL}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"require_debug_false": {"()": "django.utils.log.RequireDebugFalse"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        # Django's error mails (ADMINS), rate-limited as the failure alerts are.
        "mail_admins": {"level": "ERROR", "filters": ["require_debug_false"],
                        "class": "sagas.alerts.RateLimitedAdminEmailHandler"},
    },
    "loggers": {
        "django": {"handlers": ["mail_admins"], "level": "INFO"},
        # Django warns of every 4xx answer ("Not Found: /x") and the server's access log (uvicorn's,
        # gunicorn's with --access-logfile, runserver's) writes the same request again: each would
        # show twice. Errors (5xx) keep their traceback and mail; DJANGO_REQUEST_LOG_LEVEL=WARNING
        # brings the 4xx lines back, for a server that keeps no access log.
        "django.request": {"level": os.environ.get("DJANGO_REQUEST_LOG_LEVEL", "ERROR")},
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
