"""A lean HTTP/1.1 client for the upstream: keep-alive connections and streamed bodies.

Proxying one request through httpx cost the gateway about a millisecond of CPU (its
request and URL models, httpcore's pool walking every idle connection, h11 in pure
Python): more than all of the gateway's own work. The backends need far less — send a
JSON body, read a status, headers and a streamed body — so this does only that, on
asyncio's transports with httptools' C parser (uvicorn's own).

One connection carries one request at a time. A finished response returns its
connection to a pool of idle ones; a response left before its end (the client went
away) closes its connection, which is how the upstream learns to stop generating.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast
from urllib.parse import SplitResult, urlsplit

import httptools

MAX_IDLE_CONNECTIONS = 512
# Past this much unread body, stop reading the socket until the gateway catches up.
PAUSE_READING_BYTES = 256 * 1024


class UpstreamConnectionError(Exception):
    """The upstream could not be reached, went away mid-answer, timed out, or spoke
    something other than HTTP/1.1."""


class _ClosedBeforeAnswer(UpstreamConnectionError):
    """The connection closed before a byte of the answer: on a reused connection, the
    server had closed it while idle, and the request is safe to send again."""


class Response:
    """Status and headers at once; the body as it arrives."""

    def __init__(self, url: str, connection: _Connection, read_timeout_s: float) -> None:
        self.url = url
        self.status = connection.status
        self.headers = connection.headers
        self._connection = connection
        self._read_timeout_s = read_timeout_s

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        while (piece := await self._connection.next_piece(self._read_timeout_s)) is not None:
            yield piece

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_bytes()])


class HttpClient:
    """Requests to one server (`base_url`: scheme, host, port and an optional path prefix)."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 5.0,
        max_idle_connections: int = MAX_IDLE_CONNECTIONS,
    ) -> None:
        parts = upstream_url_parts(base_url)
        self.base_url = base_url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path
        host_header = parts.netloc.rpartition("@")[2]
        fixed = {"Host": host_header, "User-Agent": user_agent(), **(headers or {})}
        self._fixed_headers = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle_connections
        self._idle: deque[_Connection] = deque()

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, json_body: Any = None
    ) -> AsyncIterator[Response]:
        """The response, once its headers are in; raises UpstreamConnectionError."""
        message = self._message(method, path, json_body)
        connection = await self._answered(message)
        try:
            yield Response(self.base_url + path, connection, self._timeout_s)
        finally:
            self._release(connection)

    async def request(self, method: str, path: str, json_body: Any = None) -> tuple[int, bytes]:
        """Status and whole body."""
        async with self.stream(method, path, json_body) as response:
            return response.status, await response.read()

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def _answered(self, message: bytes) -> _Connection:
        """A connection whose answer's head has arrived. A reused connection the server
        closed while it sat idle gets the request again on a new one."""
        connection = self._idle_connection()
        if connection is not None:
            try:
                return await self._send(connection, message)
            except _ClosedBeforeAnswer:
                pass
        return await self._send(await self._connect(), message)

    async def _send(self, connection: _Connection, message: bytes) -> _Connection:
        try:
            connection.send(message)
            await connection.head(self._timeout_s)
        except BaseException:
            connection.close()
            raise
        return connection

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), self._host, self._port, ssl=self._ssl
                )
        except (OSError, TimeoutError) as error:
            raise UpstreamConnectionError(
                f"cannot connect to {self.base_url}: {error!r}"
            ) from error
        return connection

    def _release(self, connection: _Connection) -> None:
        if connection.reusable and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()

    def _message(self, method: str, path: str, json_body: Any) -> bytes:
        head = f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._fixed_headers}"
        if json_body is None:
            return f"{head}\r\n".encode()
        body = json.dumps(json_body, separators=(",", ":")).encode()
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the answer it is reading (httptools calls `on_*`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self._start_answer()

    def _start_answer(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self._received_any = False
        self._head_done = False
        self._keep_alive = False
        self._body_until_close = False
        self._done = False
        self._pieces: deque[bytes] = deque()
        self._buffered_bytes = 0
        self._reading_paused = False
        self._failure: UpstreamConnectionError | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def reusable(self) -> bool:
        return self._done and self._keep_alive and not self.closed

    def send(self, message: bytes) -> None:
        if self._transport is None or self.closed:
            raise _ClosedBeforeAnswer("the connection is closed")
        self._start_answer()
        self._transport.write(message)

    async def head(self, timeout_s: float) -> None:
        while not self._head_done:
            await self._wait(timeout_s)

    async def next_piece(self, timeout_s: float) -> bytes | None:
        """All of the body that has arrived and was not read yet, or None at its end."""
        while not self._pieces:
            if self._done:
                return None
            await self._wait(timeout_s)
        # What piled up comes out in one piece: a gateway that fell behind catches up in
        # one step instead of one per piece.
        piece = self._pieces.popleft() if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces.clear()
        self._buffered_bytes = 0
        if self._reading_paused:
            self._reading_paused = False
            if self._transport is not None and not self.closed:
                self._transport.resume_reading()
        return piece

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()

    async def _wait(self, timeout_s: float) -> None:
        if self._failure is not None:
            raise self._failure
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout_s, self._time_out, waiter, timeout_s)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, failure: UpstreamConnectionError) -> None:
        if self._failure is None and not self._done:
            self._failure = failure
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._failure or failure)

    def _time_out(self, waiter: asyncio.Future[None], timeout_s: float) -> None:
        if not waiter.done():
            waiter.set_exception(timed_out(timeout_s))
        self.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._done:  # nothing was asked: a server that talks out of turn is dropped
            self.close()
            return
        self._received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(UpstreamConnectionError(f"the upstream's answer is not HTTP/1.1: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head_done and self._body_until_close:
            self.on_message_complete()
        elif not self._received_any:
            self._fail(_ClosedBeforeAnswer(f"the upstream closed the connection: {exc!r}"))
        else:
            self._fail(UpstreamConnectionError(f"the upstream broke off its answer: {exc!r}"))

    # httptools.HttpResponseParser callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        framed = "content-length" in self.headers or "transfer-encoding" in self.headers
        self._body_until_close = not framed and self.status not in (204, 304)
        self._keep_alive = self._parser.should_keep_alive()  # false again once the answer ends
        self._head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)
        self._buffered_bytes += len(body)
        if not self._reading_paused and self._buffered_bytes > PAUSE_READING_BYTES:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._done = True
        self._wake()


def decode_json(body: bytes) -> Any:
    """The body as JSON, or None when it is not JSON."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def timed_out(timeout_s: float) -> UpstreamConnectionError:
    return UpstreamConnectionError(f"no answer from the upstream for {timeout_s:g} s")


def upstream_url_parts(base_url: str) -> SplitResult:
    """`base_url` split; ValueError unless it is http(s)://host[:port][/prefix]."""
    parts = urlsplit(base_url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the upstream URL {base_url!r} is not an http(s)://host[:port] URL")
    return parts


def user_agent() -> str:
    try:
        return f"throttllem/{version('throttllem')}"
    except PackageNotFoundError:
        return "throttllem"
