"""Inference servers behind one small interface: `Backend`."""

from __future__ import annotations

from collections.abc import Callable

from gateway.backends.base import Backend
from gateway.backends.openai_compat import OpenAICompatibleBackend
from gateway.backends.triton import TritonBackend
from gateway.settings import BackendKind, GatewaySettings


def connect_backend(settings: GatewaySettings, route: Callable[[], str] | None = None) -> Backend:
    """The client of the server `settings.backend_kind` names, at `settings.backend_url`;
    `route`, with instance scaling, names the Triton model that serves now."""
    if settings.backend_kind is BackendKind.openai:
        return OpenAICompatibleBackend.connect(
            settings.backend_url,
            settings.upstream_model or settings.served_model_name,
            api_key=settings.backend_api_key,
            timeout_s=settings.backend_timeout_s,
            connect_timeout_s=settings.backend_connect_timeout_s,
            client_kind=settings.upstream_client,
        )
    return TritonBackend.connect(
        settings.backend_url,
        settings.triton_model,
        timeout_s=settings.backend_timeout_s,
        connect_timeout_s=settings.backend_connect_timeout_s,
        route=route,
        client_kind=settings.upstream_client,
    )
