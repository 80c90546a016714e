"""Errors in OpenAI's shape, raised anywhere and turned into responses in one place.

GatewayError                      {"error": {"message", "type", "param", "code"}}
 ├── InvalidRequestError   400    bad input from the client
 │    └── PayloadTooLargeError 413  a body over the size limit
 ├── AuthenticationError   401    no valid API key
 ├── NotFoundError         404    unknown model or route
 ├── QueueFullError        429    too many requests waiting for admission (Retry-After)
 └── BackendError          502    the inference server failed mid-way
      └── BackendUnavailableError 503  the inference server cannot be reached
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class GatewayError(Exception):
    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"


class QueueFullError(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, code="queue_full")
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class NotFoundError(GatewayError):
    status_code = 404
    error_type = "not_found_error"


class BackendError(GatewayError):
    status_code = 502
    error_type = "upstream_error"


class BackendUnavailableError(BackendError):
    status_code = 503
    error_type = "service_unavailable"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


async def _gateway_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, GatewayError)
    if error.status_code >= 500:  # the backend's or ours: an operator wants to see it
        request_id = getattr(request.state, "request_id", "-")
        log.warning("request %s: %d %s", request_id, error.status_code, error.message)
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers())


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0] if error.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    error_type = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(error.detail), error_type), status_code=error.status_code)
