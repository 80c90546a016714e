from collections.abc import AsyncIterator

from gateway.backends.sse import SseDecoder, sse_batches


async def pieces(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def collect(*items: bytes) -> list[str]:
    return [data async for batch in sse_batches(pieces(*items)) for data in batch]


async def test_each_event_yields_its_data():
    assert await collect(b'data: {"a":1}\n\ndata: {"b":2}\n\n') == ['{"a":1}', '{"b":2}']


async def test_multi_line_data_is_joined_and_comments_are_skipped():
    assert await collect(b": keep-alive\ndata: one\ndata: two\n\n") == ["one\ntwo"]


async def test_the_last_event_counts_even_without_a_blank_line():
    # Triton sends no [DONE]: the stream may just end after the last event.
    assert await collect(b"data: last") == ["last"]
    assert await collect(b"data: last\r") == ["last"]


async def test_other_fields_and_no_space_after_the_colon():
    assert await collect(b"event: message\nid: 7\ndata:x\n\n") == ["x"]


async def test_crlf_line_ends():
    assert await collect(b"data: a\r\n\r\ndata: b\r\n\r\n") == ["a", "b"]


async def test_events_split_at_every_byte_come_out_whole():
    stream = 'data: {"text":"héllo"}\r\n\r\n: ping\ndata: x\ndata: y\n\n'.encode()
    for cut in range(1, len(stream)):
        assert await collect(stream[:cut], stream[cut:]) == ['{"text":"héllo"}', "x\ny"]
    assert await collect(*(stream[i : i + 1] for i in range(len(stream)))) == [
        '{"text":"héllo"}',
        "x\ny",
    ]


def test_feed_returns_only_the_events_a_piece_completes():
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b") == ["a"]
    assert decoder.end() == ["b"]


async def test_each_batch_holds_the_events_one_piece_completed():
    batches = [batch async for batch in sse_batches(pieces(b"data: a\n\ndata: b\n\nda", b"ta: c"))]
    assert batches == [["a", "b"], ["c"]]
