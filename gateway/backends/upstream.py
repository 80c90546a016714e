"""The upstream client the backends speak through, and the choice between the two.

`httptools` is the project's own lean client (http_client.py); `aiohttp` the library's
(aiohttp_client.py). Both send a JSON body, read a status, headers and a streamed body,
keep connections alive, and close one whose answer was left before its end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from gateway.settings import UpstreamClientKind


class UpstreamResponse(Protocol):
    url: str
    status: int
    headers: dict[str, str]  # names in lower case

    def iter_bytes(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...


class UpstreamClient(Protocol):
    base_url: str

    def stream(
        self, method: str, path: str, json_body: Any = None
    ) -> AbstractAsyncContextManager[UpstreamResponse]: ...

    async def request(self, method: str, path: str, json_body: Any = None) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


def upstream_client(
    kind: UpstreamClientKind | str,
    base_url: str,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 600.0,
    connect_timeout_s: float = 5.0,
) -> UpstreamClient:
    if UpstreamClientKind(kind) is UpstreamClientKind.aiohttp:
        from gateway.backends.aiohttp_client import AiohttpClient

        return AiohttpClient(base_url, headers, timeout_s, connect_timeout_s)
    from gateway.backends.http_client import HttpClient

    return HttpClient(base_url, headers, timeout_s, connect_timeout_s)
