"""Server-Sent Events, read from the pieces of a response body as they arrive."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def sse_batches(pieces: AsyncIterator[bytes]) -> AsyncIterator[list[str]]:
    """The `data` of the events each piece completes (never an empty list); multi-line
    data is joined with newlines."""
    decoder = SseDecoder()
    async for piece in pieces:
        if events := decoder.feed(piece):
            yield events
    if events := decoder.end():
        yield events


class SseDecoder:
    """Events' data from bytes split anywhere, lines ending in LF or CRLF.

    Triton's stream may simply stop after its last event, so `end` yields an event
    that no blank line closed.
    """

    def __init__(self) -> None:
        self._partial_line = b""
        self._data: list[str] = []

    def feed(self, piece: bytes) -> list[str]:
        lines = (self._partial_line + piece).split(b"\n")
        self._partial_line = lines.pop()
        events: list[str] = []
        for line in lines:
            self._line(line[:-1] if line.endswith(b"\r") else line, events)
        return events

    def end(self) -> list[str]:
        events: list[str] = []
        if self._partial_line:
            self._line(self._partial_line.removesuffix(b"\r"), events)
            self._partial_line = b""
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _line(self, line: bytes, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            text = value.decode("utf-8", errors="replace")
            self._data.append(text[1:] if text.startswith(" ") else text)
