"""Web-wide safety: the API's error body for every error under /api/, the
Content-Security-Policy header, and who a client is for the sign-in limits."""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

log = logging.getLogger(__name__)

API_PREFIX = "/api/"
API_ROOT = "/api"
API_DOCS_PREFIXES = ("/api/docs/", "/api/redoc/")

# The code for an error Django (not the API's views) answered: no route, a method the route
# does not take, a crash. The body's ``type`` comes from the status (billing.api.errors).
CODE_BY_STATUS = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
}


def api_error_response(
    request: HttpRequest, status: int, allow: str | None = None, message: str | None = None
) -> JsonResponse:
    """The documented error body for a failure that happened outside the API's views."""
    from billing.api.errors import error_body

    code = CODE_BY_STATUS.get(status, "internal_error" if status >= 500 else "invalid_request")
    if message is not None:
        pass
    elif status == 404:
        message = f"no route {request.path}"
    elif status == 405:
        message = f"{request.method} is not allowed here" + (f"; allowed: {allow}" if allow else "")
    elif status >= 500:
        message = "an internal error occurred; it was logged. Retry later."
    else:
        message = f"the request was refused ({status})"
    body = error_body(status, code, message)
    response = JsonResponse(body, status=status)
    if allow:
        response["Allow"] = allow
    return response


def is_api_path(path: str) -> bool:
    """``/api`` itself and everything under ``/api/`` (not ``/apiary``)."""
    return path == API_ROOT or path.startswith(API_PREFIX)


def _is_json(response: HttpResponse) -> bool:
    content_type = response.get("Content-Type", "").split(";")[0].strip().lower()
    return content_type == "application/json" or content_type.endswith("+json")


class APIErrorMiddleware:
    """Under /api (the path itself and everything under /api/), an error response that is
    not JSON (Django's 404 and 500 pages, its debug pages with DEBUG on, a 405 from a plain
    view) is replaced by the API's error body with the same status. The crash itself was
    already logged by Django.

    A path with a NUL character (``/customers/a%00b``) names nothing: PostgreSQL cannot
    store NUL in text, so no object can have it as its id, and looking it up would fail in
    the database (a 500). Such a request is answered 404 ``not_found`` here, before any
    view runs, on every route (an HTML 404 outside /api)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path:
            if is_api_path(request.path):
                return api_error_response(
                    request, 404, message="nothing exists at a path with a NUL character"
                )
            raise Http404("no such page")
        response = self.get_response(request)
        if (
            response.status_code < 400
            or not is_api_path(request.path)
            or getattr(response, "streaming", False)
            or _is_json(response)
        ):
            return response
        return api_error_response(request, response.status_code, response.get("Allow"))


class ContentSecurityPolicyMiddleware:
    """Content-Security-Policy on every response (settings.CONTENT_SECURITY_POLICY; the API
    docs pages get CONTENT_SECURITY_POLICY_API_DOCS). A view that set its own is kept."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            policy = (
                settings.CONTENT_SECURITY_POLICY_API_DOCS
                if request.path.startswith(API_DOCS_PREFIXES)
                else settings.CONTENT_SECURITY_POLICY
            )
            if policy:
                response["Content-Security-Policy"] = policy
        return response


def client_ip(request: HttpRequest) -> str | None:
    """The client's address: REMOTE_ADDR, or behind TRUSTED_PROXY_COUNT proxies the address
    the outermost trusted proxy saw (X-Forwarded-For, that many entries from the right).
    Entries further left are the client's own say and are not trusted."""
    remote = request.META.get("REMOTE_ADDR") or None  # none: a request made in code
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies <= 0:
        return remote
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h]
    return hops[-proxies] if len(hops) >= proxies else remote


def sign_in_username(request: HttpRequest, credentials: dict | None) -> str | None:
    """The username a sign-in attempt names, as the lockout counts it: e-mail addresses
    are usernames here, so case and surrounding spaces do not make a new account."""
    username = (credentials or {}).get("username")
    if username is None and request is not None:
        username = request.POST.get("username")
    return username.strip().lower() if isinstance(username, str) else username


def json_error_for_api(request: HttpRequest, status: int) -> HttpResponse | None:
    """For billing.project.urls' handlers: the API body under /api/, else None (the HTML page)."""
    if is_api_path(request.path):
        return api_error_response(request, status)
    return None


__all__ = [
    "APIErrorMiddleware",
    "ContentSecurityPolicyMiddleware",
    "api_error_response",
    "client_ip",
    "is_api_path",
    "json_error_for_api",
    "sign_in_username",
]
