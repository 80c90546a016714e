"""Both upstream HTTP clients against a real socket that sends exact bytes: the same
behaviour from the hand-written one and aiohttp's."""

from __future__ import annotations

import asyncio
from typing import Protocol

import pytest

from gateway.backends.http_client import UpstreamConnectionError
from gateway.backends.upstream import UpstreamClient, UpstreamClientKind, upstream_client
from tests.scripted_server import (
    LAST_CHUNK,
    Received,
    Reply,
    ScriptedServer,
    chunk,
    chunked_head,
    response,
)
from tests.servers import free_ports


class Clients(Protocol):
    def __call__(
        self, base_url: str, headers: dict[str, str] | None = None, timeout_s: float = 600.0
    ) -> UpstreamClient: ...


@pytest.fixture(params=list(UpstreamClientKind))
def make_client(request: pytest.FixtureRequest) -> Clients:
    def make(
        base_url: str, headers: dict[str, str] | None = None, timeout_s: float = 600.0
    ) -> UpstreamClient:
        return upstream_client(request.param, base_url, headers, timeout_s)

    return make


def ok(_: Received) -> Reply:
    return Reply([response(200, b'{"ok":true}')])


async def test_a_json_body_and_the_fixed_headers_are_sent(make_client: Clients):
    async with ScriptedServer(ok) as server:
        client = make_client(server.url + "/prefix", {"Authorization": "Bearer sk-up"})
        status, body = await client.request("POST", "/v1/completions", {"prompt": "hé"})
        await client.aclose()
    (received,) = server.received
    assert (status, body) == (200, b'{"ok":true}')
    assert (received.method, received.path) == ("POST", "/prefix/v1/completions")
    assert received.json() == {"prompt": "hé"}
    assert received.headers["authorization"] == "Bearer sk-up"
    assert received.headers["content-type"] == "application/json"
    assert received.headers["host"] == server.url.removeprefix("http://")


async def test_finished_answers_leave_their_connection_for_the_next_request(make_client: Clients):
    async with ScriptedServer(ok) as server:
        client = make_client(server.url)
        for _ in range(3):
            assert (await client.request("GET", "/"))[0] == 200
        await client.aclose()
    assert server.connections == 1
    assert [r.connection for r in server.received] == [0, 0, 0]


async def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_request_sent_again(
    make_client: Clients,
):
    async with ScriptedServer(lambda _: Reply([response(200, b"x")], close=True)) as server:
        client = make_client(server.url)
        assert await client.request("GET", "/a") == (200, b"x")
        await asyncio.sleep(0.05)  # the close reaches the client's idle connection
        assert await client.request("GET", "/b") == (200, b"x")
        await client.aclose()
    assert [r.path for r in server.received] == ["/a", "/b"]
    assert server.connections == 2


async def test_a_body_without_length_runs_to_the_close_and_is_not_reused(make_client: Clients):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    async with ScriptedServer(lambda _: Reply([head, b"one ", b"two"], close=True)) as server:
        client = make_client(server.url)
        assert await client.request("GET", "/") == (200, b"one two")
        assert await client.request("GET", "/") == (200, b"one two")
        await client.aclose()
    assert server.connections == 2


async def test_chunks_arrive_as_they_are_sent(make_client: Clients):
    pieces = [chunked_head(), chunk(b"first"), chunk(b"second"), LAST_CHUNK]
    async with ScriptedServer(lambda _: Reply(pieces, pause_s=0.05)) as server:
        client = make_client(server.url)
        async with client.stream("POST", "/", {}) as answer:
            assert answer.status == 200
            assert answer.headers["transfer-encoding"] == "chunked"
            assert [piece async for piece in answer.iter_bytes()] == [b"first", b"second"]
        await client.aclose()


async def test_an_answer_broken_off_midway_is_a_connection_error(make_client: Clients):
    pieces = [chunked_head(), chunk(b"first")]
    async with ScriptedServer(lambda _: Reply(pieces, close=True)) as server:
        client = make_client(server.url)
        seen = []
        with pytest.raises(UpstreamConnectionError, match="broke off"):
            async with client.stream("POST", "/", {}) as answer:
                async for piece in answer.iter_bytes():
                    seen.append(piece)
        await client.aclose()
    assert seen == [b"first"]


async def test_leaving_an_answer_early_closes_its_connection(make_client: Clients):
    pieces = [chunked_head(), chunk(b"first"), chunk(b"second"), LAST_CHUNK]
    async with ScriptedServer(lambda _: Reply(pieces, pause_s=0.2)) as server:
        client = make_client(server.url)
        async with client.stream("POST", "/", {}) as answer:
            async for _ in answer.iter_bytes():
                break
        for _ in range(100):  # the server notices at its next write, 0.2 s on at most
            if server.connections_closed_by_client:
                break
            await asyncio.sleep(0.01)
        assert server.connections_closed_by_client == 1
        assert await client.request("GET", "/") == (200, b"firstsecond")
        await client.aclose()
    assert server.connections == 2


async def test_an_upstream_that_stalls_times_out(make_client: Clients):
    async with ScriptedServer(lambda _: Reply([chunked_head()], pause_s=0)) as server:
        client = make_client(server.url, timeout_s=0.2)
        with pytest.raises(UpstreamConnectionError, match=r"no answer .* for 0\.2 s"):
            await client.request("GET", "/")
        await client.aclose()


async def test_an_unreachable_upstream_is_named(make_client: Clients):
    (port,) = free_ports(1)
    client = make_client(f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamConnectionError, match=f"127.0.0.1:{port}"):
        await client.request("GET", "/")
    await client.aclose()


async def test_an_answer_that_is_not_http_is_a_connection_error(make_client: Clients):
    async with ScriptedServer(lambda _: Reply([b"SSH-2.0-OpenSSH\r\n\r\n"])) as server:
        client = make_client(server.url)
        with pytest.raises(UpstreamConnectionError, match="not HTTP"):
            await client.request("GET", "/")
        await client.aclose()


async def test_a_large_body_read_slowly_arrives_whole(make_client: Clients):
    body = bytes(range(256)) * 8192  # 2 MiB: reading pauses and resumes several times
    async with ScriptedServer(lambda _: Reply([response(200, body, "x/bytes")])) as server:
        client = make_client(server.url)
        received = bytearray()
        async with client.stream("GET", "/") as answer:
            async for piece in answer.iter_bytes():
                received += piece
                await asyncio.sleep(0)
        await client.aclose()
    assert bytes(received) == body


@pytest.mark.parametrize("url", ["ftp://host/", "127.0.0.1:8000", "http://"])
def test_a_url_that_is_not_http_is_refused(make_client: Clients, url: str):
    with pytest.raises(ValueError, match="not an http"):
        make_client(url)
