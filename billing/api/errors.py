"""The API's one error format: ``{"error": {"type", "code", "message", "param"}}``.

Every failure a client can cause is a 4xx with a stable ``code``; 5xx is left for outages.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from billing.errors import BillingError
from ledger.errors import LedgerError

TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "balance_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    406: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


# Codes a serializer may raise (ValidationError(..., code=...)) that reach the client as they
# are; any other validation failure is ``invalid_parameter`` (or ``parameter_missing``).
PASSTHROUGH_CODES = frozenset({"unknown_parameter", "amount_too_large"})


class APIError(exceptions.APIException):
    """An error raised by the API layer itself, with its own code."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        param: str | None = None,
        error_type: str | None = None,
    ):
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.error_code = code
        self.param = param
        self.error_type = error_type


def reference_reused(reference: str | None, what: str) -> APIError:
    """409 for a client's reference already used for another ``what``, naming the client's
    reference (never the ledger's internal one, e.g. ``top-up:5:pay-1``)."""
    return APIError(
        409,
        "reference_reused",
        f"reference {reference!r} was already used for a different {what}; "
        "use a new reference for a new one",
        param="reference",
    )


def error_body(
    status_code: int,
    code: str,
    message: str,
    param: str | None = None,
    error_type: str | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "type": error_type or TYPE_BY_STATUS.get(status_code, "api_error"),
            "code": code,
            "message": message,
            "param": param,
        }
    }


def _first_validation_error(detail: Any, path: str = "") -> tuple[str | None, str, str]:
    """(param, message, drf code) of the first field error in a nested ValidationError."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):  # DRF reports errors in lists of objects by index
                return _first_validation_error(value, f"{path}[{key}]")
            name = "" if key == "non_field_errors" else str(key)
            sub = f"{path}.{name}" if path and name else (name or path)
            return _first_validation_error(value, sub)
    if isinstance(detail, list) and detail:
        for i, item in enumerate(detail):
            if item:  # lists of nested objects have empty dicts for the valid ones
                if isinstance(item, dict | list):
                    return _first_validation_error(item, f"{path}[{i}]")
                return _first_validation_error(item, path)
    code = getattr(detail, "code", "invalid")
    return (path or None), str(detail), code


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    headers: dict[str, str] = {}
    if isinstance(exc, RequestDataTooBig):
        status_code = 413
        body = error_body(
            413,
            "payload_too_large",
            f"the request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes; "
            "send fewer events per batch",
        )
    elif isinstance(exc, LedgerError | BillingError):
        status_code = exc.http_status
        body = error_body(status_code, exc.code, exc.message, getattr(exc, "param", None))
    elif isinstance(exc, APIError):
        status_code = exc.status_code
        body = error_body(status_code, exc.error_code, str(exc.detail), exc.param, exc.error_type)
    elif isinstance(exc, exceptions.ValidationError):
        status_code = 400
        param, message, drf_code = _first_validation_error(exc.detail)
        if drf_code in PASSTHROUGH_CODES:
            code = drf_code
        elif drf_code in ("required", "null"):
            code = "parameter_missing"
        else:
            code = "invalid_parameter"
        body = error_body(400, code, message, param)
    elif isinstance(exc, exceptions.APIException):
        status_code = exc.status_code
        code = {
            exceptions.ParseError: "invalid_json",
            exceptions.NotAuthenticated: "authentication_required",
            exceptions.AuthenticationFailed: "invalid_api_key",
            exceptions.PermissionDenied: "insufficient_scope",
            exceptions.NotFound: "not_found",
            exceptions.MethodNotAllowed: "method_not_allowed",
            exceptions.NotAcceptable: "not_acceptable",
            exceptions.UnsupportedMediaType: "unsupported_media_type",
            exceptions.Throttled: "rate_limited",
        }.get(type(exc), "invalid_request")
        detail_code = exc.get_codes() if isinstance(exc.detail, str) else None
        if isinstance(detail_code, str) and detail_code in {
            "api_key_revoked",
            "invalid_api_key",
            "insufficient_scope",
        }:
            code = detail_code
        body = error_body(status_code, code, str(exc.detail))
        if isinstance(exc, exceptions.Throttled):
            wait = exc.wait  # type: ignore[attr-defined]  # DRF sets it; its stubs omit it
            if wait is not None:
                headers["Retry-After"] = str(int(wait) + 1)
        # DRF's APIView puts it on an authentication failure when the scheme has a header
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
    else:
        return None  # a real fault: a 500, logged
    set_rollback()
    return Response(body, status=status_code or status.HTTP_400_BAD_REQUEST, headers=headers)
