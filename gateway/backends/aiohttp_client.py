"""The upstream client over aiohttp: the same surface as `http_client.HttpClient`.

aiohttp's client is a well-kept library with its own C parser; `throttllem bench gateway`
measures it against the hand-written client in one run (`THROTTLLEM_UPSTREAM_CLIENT`
picks one). As there: keep-alive connections, the body as it arrives, and a response left
before its end closes its connection, which is how the upstream learns to stop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from gateway.backends.http_client import (
    UpstreamConnectionError,
    timed_out,
    upstream_url_parts,
    user_agent,
)


class AiohttpResponse:
    """Status and headers at once; the body as it arrives."""

    def __init__(self, url: str, response: aiohttp.ClientResponse, timeout_s: float) -> None:
        self.url = url
        self._timeout_s = timeout_s
        self.status = response.status
        self.headers = {name.lower(): value for name, value in response.headers.items()}
        self._response = response

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._response.content.iter_any():
                yield piece
        except TimeoutError as error:
            raise timed_out(self._timeout_s) from error
        except aiohttp.ClientError as error:
            raise UpstreamConnectionError(
                f"the upstream broke off its answer: {error!r}"
            ) from error

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_bytes()])


class AiohttpClient:
    """Requests to one server (`base_url`: scheme, host, port and an optional path prefix).

    The session is made on first use, inside the event loop that serves (aiohttp binds
    it to the loop that made it).
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        upstream_url_parts(base_url)  # refused here, as by the hand-written client
        self.base_url = base_url.rstrip("/")
        self._headers = {"User-Agent": user_agent(), **(headers or {})}
        # Like the hand-written client: `timeout_s` bounds each wait for the upstream.
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, json_body: Any = None
    ) -> AsyncIterator[AiohttpResponse]:
        """The response, once its headers are in; raises UpstreamConnectionError."""
        url = self.base_url + path
        response = await self._answered(method, url, json_body)
        try:
            yield AiohttpResponse(url, response, self._timeout_s)
        finally:
            if response.content.at_eof():
                response.release()  # back to the pool
            else:
                response.close()  # left before its end: the upstream sees the close

    async def request(self, method: str, path: str, json_body: Any = None) -> tuple[int, bytes]:
        """Status and whole body."""
        async with self.stream(method, path, json_body) as response:
            return response.status, await response.read()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _answered(self, method: str, url: str, json_body: Any) -> aiohttp.ClientResponse:
        """aiohttp sends a POST once; a keep-alive connection the server closed while idle
        (the disconnect comes before any answer) gets the request once more."""
        body = None if json_body is None else json.dumps(json_body, separators=(",", ":"))
        headers = {"Content-Type": "application/json"} if body is not None else None
        session = self._session or self._open()
        try:
            return await session.request(method, url, data=body, headers=headers)
        except aiohttp.ServerDisconnectedError:
            pass  # once more, on a new connection
        except Exception as error:
            raise self._failure(error) from error
        try:
            return await session.request(method, url, data=body, headers=headers)
        except Exception as error:
            raise self._failure(error) from error

    def _failure(self, error: Exception) -> Exception:
        if isinstance(error, aiohttp.ServerTimeoutError) and "connect" not in str(error):
            return timed_out(self._timeout_s)
        if isinstance(error, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
            return UpstreamConnectionError(f"the upstream's answer is not HTTP/1.1: {error!r}")
        if isinstance(error, aiohttp.ClientError | TimeoutError):
            return UpstreamConnectionError(f"cannot reach {self.base_url}: {error!r}")
        return error

    def _open(self) -> aiohttp.ClientSession:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=0),  # no cap on connections, as there
            skip_auto_headers=("Accept-Encoding",),  # an event stream is not worth gzip
        )
        return self._session
