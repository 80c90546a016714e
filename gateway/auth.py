"""Bearer keys: clients' (`THROTTLLEM_API_KEYS`) and the admin endpoints' own token."""

from __future__ import annotations

import hmac

from fastapi import Request

from gateway.errors import AuthenticationError, NotFoundError
from gateway.services import Services


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str, keys: list[str]) -> bool:
    """Compare in constant time against every key, so timing tells nothing."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


async def require_api_key(request: Request) -> None:
    services: Services = request.app.state.services
    keys = services.settings.api_keys
    if not keys:
        return
    token = _bearer(request)
    if token is None:
        raise AuthenticationError(
            "You didn't provide an API key: send it as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )
    if not _matches(token, keys):
        raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")


async def require_admin_token(request: Request) -> None:
    services: Services = request.app.state.services
    expected = services.settings.admin_token
    if expected is None:  # admin endpoints are off: they do not exist
        raise NotFoundError(f"no route {request.url.path}")
    token = _bearer(request)
    if token is None or not _matches(token, [expected]):
        raise AuthenticationError(
            "the admin endpoints need the admin token", code="invalid_admin_token"
        )
