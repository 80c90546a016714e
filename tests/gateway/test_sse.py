from collections.abc import AsyncIterator

from gateway.backends.sse import sse_data


async def lines(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def collect(*items: str) -> list[str]:
    return [data async for data in sse_data(lines(*items))]


async def test_each_event_yields_its_data():
    assert await collect('data: {"a":1}', "", 'data: {"b":2}', "") == ['{"a":1}', '{"b":2}']


async def test_multi_line_data_is_joined_and_comments_are_skipped():
    assert await collect(": keep-alive", "data: one", "data: two", "") == ["one\ntwo"]


async def test_the_last_event_counts_even_without_a_blank_line():
    # Triton sends no [DONE]: the stream may just end after the last event.
    assert await collect("data: last") == ["last"]


async def test_other_fields_and_no_space_after_the_colon():
    assert await collect("event: message", "id: 7", "data:x", "") == ["x"]
