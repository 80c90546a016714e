"""A raw HTTP/1.1 server on a real socket that answers with scripted bytes.

For what a well-behaved server never does: close an idle keep-alive connection, break
off an answer, stall, send a body without a length, or split events anywhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reply:
    """The bytes to send, in these pieces; then close the connection or keep it."""

    pieces: Sequence[bytes]
    close: bool = False
    pause_s: float = 0.0  # between pieces


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which connection, counted from 0

    def json(self) -> object:
        return json.loads(self.body)


Script = Callable[[Received], Reply]


@dataclass
class ScriptedServer:
    script: Script
    received: list[Received] = field(default_factory=list)
    connections_closed_by_client: int = 0  # seen at a read, or at a write that failed
    url: str = ""
    _server: asyncio.Server | None = None
    _connections: int = 0

    @property
    def connections(self) -> int:
        return self._connections

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self._connections
        self._connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.connections_closed_by_client += 1
                    return
                request = _parse(head, number)
                length = int(request.headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                request = Received(request.method, request.path, request.headers, body, number)
                self.received.append(request)
                reply = self.script(request)
                for index, piece in enumerate(reply.pieces):
                    if index and reply.pause_s:
                        await asyncio.sleep(reply.pause_s)
                    writer.write(piece)
                    await writer.drain()
                if reply.close:
                    return
        except ConnectionError:
            self.connections_closed_by_client += 1
        except asyncio.CancelledError:
            return
        finally:
            writer.close()


def _parse(head: bytes, connection: int) -> Received:
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Received(method, path, headers, b"", connection)


def response(status: int, body: bytes = b"", content_type: str = "application/json") -> bytes:
    """A whole answer with a Content-Length."""
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def json_response(status: int, answer: object) -> bytes:
    return response(status, json.dumps(answer).encode())


def chunked_head(status: int = 200, content_type: str = "text/event-stream") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


def sse_reply(events: Sequence[object]) -> Reply:
    """Each event one `data:` chunk of a chunked answer, ended properly."""
    pieces = [chunked_head()]
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        pieces.append(chunk(f"data: {data}\n\n".encode()))
    return Reply([*pieces, LAST_CHUNK])
