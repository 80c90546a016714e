"""`throttllem bench gateway`: the latency the gateway adds in front of an instant server.

The instant upstream (throttllem.instant_upstream) answers Triton's generate extension
with no delay. An open-loop Poisson load (requests fire at their scheduled times, whatever
is still in flight) of `max_tokens` 16 requests goes first straight to the upstream's
`generate_stream` (reading the whole stream), then to the gateway's non-streamed
`/v1/completions`, which streams the same endpoint. The added latency of a percentile is
the gateway's percentile minus the direct one's; latencies run from the moment each
request is sent. Streamed requests of 64 tokens, at a lower rate and run first, go to a
second upstream that paces its tokens and writes each one's send time as its text: each
token's trip (sent by the upstream to read by the client) is timed direct and through a
gateway in front of that upstream, and the added per-chunk latency is the difference of
their medians.

Side by side, all serving at once: the upstream itself, a bare FastAPI + httpx
pass-through proxy (throttllem.bench.bare_proxy, the reference) and the gateway as
deployed (length prediction, planned admission and the Redis scoreboard on) once over
each upstream client (`httptools`, its own; `aiohttp`), the last three with
`compare_workers` workers each. In interleaved rounds, each gets closed loops: one
request at a time (c=1: latency), then `compare_concurrency` always in flight
(throughput). The load goes out over the lean httptools client, one keep-alive
connection per request in flight, so the load generator takes little of the shared
cores. `max_rps` is the gateway's throughput there.

The load generator, the upstream and the gateway share this machine's cores, so every
figure includes their contention.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import numpy as np

from gateway.backends.http_client import HttpClient, UpstreamConnectionError
from throttllem.bench.bare_proxy import UPSTREAM_ENV

MODEL = "bench-model"
TRITON_MODEL = "ensemble"
PROMPT = "Write one short sentence about the sea."
LATENCY_TOKENS = 16
STREAM_TOKENS = 64
STREAM_TOKEN_INTERVAL_MS = 5.0  # one event per read: nothing for the gateway to merge
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
CLIENTS = 16
REQUEST_TIMEOUT_S = 20.0  # an overloaded gateway fails requests instead of stalling
T = TypeVar("T")
TARGETS_MS = {"added_p50": 2.0, "added_p99": 10.0, "stream_chunk_added_p50": 0.5}
# Against the bare proxy: c=1 p50 at most 1.5x its own, throughput at least 0.6x its own.
C1_P50_RATIO_MAX = 1.5
THROUGHPUT_RATIO_MIN = 0.6
LIBRARY_WITHIN = 0.10  # the library client is kept when it is this close to the hand-written one
LENGTH_MODEL = "llama-2-13b-chat-hf"
PERFORMANCE_PROFILE = "a100-40gb/llama-2-13b/tp1"


@dataclass(frozen=True)
class BenchOptions:
    rate_per_s: float = 200.0
    duration_s: float = 10.0
    stream_rate_per_s: float = 20.0
    warmup_s: float = 1.0
    compare_concurrency: int = 32
    compare_duration_s: float = 6.0  # each server's, split over the rounds
    compare_rounds: int = 3
    compare_workers: int = 2
    # More than one worker needs the shared scoreboard; each run gets a scoreboard of its own.
    redis_url: str = "redis://127.0.0.1:6379/0"
    seed: int = 0


class _Failed(Exception):
    pass


def bench_gateway(json_path: Path | None, options: BenchOptions | None = None) -> dict[str, Any]:
    options = options or BenchOptions()
    upstream_port, paced_port, gateway_port = free_ports(3)
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    paced_url = f"http://127.0.0.1:{paced_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    workers = options.compare_workers if serve_has_workers_flag() else 1
    with (
        _server(upstream_command(upstream_port), os.environ.copy(), f"{upstream_url}/v2/health/ready"),
        _server(upstream_command(paced_port, STREAM_TOKEN_INTERVAL_MS), os.environ.copy(),
                f"{paced_url}/v2/health/ready"),
    ):  # fmt: skip
        with _server(gateway_command(gateway_port), _gateway_env(paced_url), f"{gateway_url}/health/ready"):  # fmt: skip
            runs = _run(_stream_runs(paced_url, gateway_url, options))
        with _server(gateway_command(gateway_port), _gateway_env(upstream_url), f"{gateway_url}/health/ready"):  # fmt: skip
            runs |= _run(_latency_runs(upstream_url, gateway_url, options))
        compared = _side_by_side(upstream_url, workers, options)
    report = _report(runs, compared, workers, options)
    _print(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _side_by_side(
    upstream_url: str, workers: int, options: BenchOptions
) -> dict[str, dict[str, Any]]:
    """The upstream, the bare proxy and the gateway over each client, all serving at
    once, measured in turn in interleaved rounds: a slow spell of a shared machine then
    falls on every one of them, not on one."""
    bare_port, gateway_port, aiohttp_port = free_ports(3)
    generate = f"/v2/models/{TRITON_MODEL}/generate_stream"
    triton_body, openai_body = _triton_body(LATENCY_TOKENS), _openai_body(LATENCY_TOKENS, False)
    gateway_env = _deployed_gateway_env(upstream_url, options.redis_url) if workers > 1 else (
        _gateway_env(upstream_url) | _predictor_env()
    )  # fmt: skip
    targets = {"direct": (upstream_url, generate, triton_body)}
    with ExitStack() as servers:
        url = f"http://127.0.0.1:{bare_port}"
        servers.enter_context(_server(bare_proxy_command(bare_port, workers),
                                      os.environ | {UPSTREAM_ENV: upstream_url}, f"{url}/health"))  # fmt: skip
        targets["bare_proxy"] = (url, generate, triton_body)
        for name, client, port in (("gateway", "httptools", gateway_port),
                                   ("gateway_aiohttp", "aiohttp", aiohttp_port)):  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            env = gateway_env | {"THROTTLLEM_UPSTREAM_CLIENT": client}
            servers.enter_context(_server(gateway_command(port, workers), env, f"{url}/health/ready"))  # fmt: skip
            targets[name] = (url, "/v1/completions", openai_body)
        return _run(_rounds(targets, options))


def upstream_command(port: int, token_interval_ms: float = 0.0) -> list[str]:
    command = [sys.executable, "-m", "throttllem.instant_upstream", "--port", str(port)]
    return [*command, "--model", MODEL, "--token-interval-ms", str(token_interval_ms)]


def gateway_command(port: int, workers: int = 1) -> list[str]:
    command = [sys.executable, "-m", "throttllem", "--log-level", "WARNING", "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    return command + (["--workers", str(workers)] if workers > 1 else [])


def bare_proxy_command(port: int, workers: int = 1) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "throttllem.bench.bare_proxy:create_app",
    ]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return [*command, "--no-access-log", "--workers", str(workers)]


def serve_has_workers_flag() -> bool:
    command = [sys.executable, "-m", "throttllem", "serve", "--help"]
    return "--workers" in subprocess.run(command, capture_output=True, text=True).stdout


def _gateway_env(upstream_url: str) -> dict[str, str]:
    """Only the bench's own THROTTLLEM_* settings, so that the caller's cannot change it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("THROTTLLEM_")}
    return env | {
        "THROTTLLEM_BACKEND_KIND": "triton",
        "THROTTLLEM_BACKEND_URL": upstream_url,
        "THROTTLLEM_TRITON_MODEL": TRITON_MODEL,
        "THROTTLLEM_SERVED_MODEL_NAME": MODEL,
        "THROTTLLEM_GPU_BACKEND": "none",
    }


def _predictor_env() -> dict[str, str]:
    """The shipped length and performance models: prediction and planned admission on."""
    from predictor.shipped import length_model_path, performance_model_path

    return {
        "THROTTLLEM_LENGTH_MODEL_PATH": str(length_model_path(LENGTH_MODEL)),
        "THROTTLLEM_PERFORMANCE_MODEL_PATH": str(performance_model_path(PERFORMANCE_PROFILE)),
    }


def _deployed_gateway_env(upstream_url: str, redis_url: str) -> dict[str, str]:
    return _gateway_env(upstream_url) | _predictor_env() | _scoreboard_env(redis_url)


def _run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed, as the servers run: the load generator, sharing their
    cores, then takes less of them. None: asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _scoreboard_env(redis_url: str) -> dict[str, str]:
    """A shared scoreboard for several workers, under an instance name no other run uses."""
    instance = f"bench-gateway-{os.getpid()}-{time.time_ns()}"
    return {"THROTTLLEM_REDIS_URL": redis_url, "THROTTLLEM_INSTANCE": instance}


def _triton_body(tokens: int) -> dict[str, Any]:
    return {"text_input": PROMPT, "max_tokens": tokens, "stream": True,
            "return_num_input_tokens": True, "return_num_output_tokens": True}  # fmt: skip


def _openai_body(tokens: int, stream: bool) -> dict[str, Any]:
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": tokens, "stream": stream}


async def _stream_runs(
    paced_url: str, gateway_url: str, options: BenchOptions
) -> dict[str, dict[str, Any]]:
    """Token trips, direct and through the gateway, from a paced upstream."""
    direct_url = f"{paced_url}/v2/models/{TRITON_MODEL}/generate_stream"
    through_url = f"{gateway_url}/v1/completions"

    def direct(client: httpx.AsyncClient) -> Awaitable[np.ndarray]:
        return _token_trips(client, direct_url, _triton_body(STREAM_TOKENS), _triton_text)

    def through(client: httpx.AsyncClient) -> Awaitable[np.ndarray]:
        body = _openai_body(STREAM_TOKENS, True)
        return _token_trips(client, through_url, body, _completion_text)

    plans = {"direct_stream": direct, "gateway_stream": through}
    return await _runs(plans, options.stream_rate_per_s, options)


async def _latency_runs(
    upstream_url: str, gateway_url: str, options: BenchOptions
) -> dict[str, dict[str, Any]]:
    direct_url = f"{upstream_url}/v2/models/{TRITON_MODEL}/generate_stream"
    through_url = f"{gateway_url}/v1/completions"
    plans: dict[str, _Action] = {
        "direct": lambda c: _read_all(c, direct_url, _triton_body(LATENCY_TOKENS)),
        "gateway": lambda c: _read_all(c, through_url, _openai_body(LATENCY_TOKENS, False)),
    }
    return await _runs(plans, options.rate_per_s, options)


async def _runs(
    plans: dict[str, _Action], rate_per_s: float, options: BenchOptions
) -> dict[str, dict[str, Any]]:
    """Each plan in turn: a warm-up, then the measured open loop."""
    runs = {}
    async with _Clients() as clients:
        for seed, (name, action) in enumerate(plans.items(), options.seed):
            rng = np.random.default_rng(seed)
            await _open_loop(action, clients, rate_per_s, options.warmup_s, rng)
            runs[name] = await _open_loop(action, clients, rate_per_s, options.duration_s, rng)
    return runs


async def _rounds(
    targets: dict[str, tuple[str, str, dict[str, Any]]], options: BenchOptions
) -> dict[str, dict[str, Any]]:
    """A warm-up of each, then `compare_rounds` rounds in which each gets one request at a
    time, then `compare_concurrency` at a time; each loop's share of `compare_duration_s`."""
    concurrency, rounds = options.compare_concurrency, options.compare_rounds
    loop_s = options.compare_duration_s / rounds
    for url, path, body in targets.values():
        await _closed_loop(url, path, body, concurrency, options.warmup_s)
    one: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    many: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, path, body) in targets.items():
            one[name].append(await _closed_loop(url, path, body, 1, loop_s))
            many[name].append(await _closed_loop(url, path, body, concurrency, loop_s))
    return {name: _pooled(one[name], many[name], concurrency) for name in targets}


def _pooled(
    one: list[dict[str, Any]], many: list[dict[str, Any]], concurrency: int
) -> dict[str, Any]:
    one_ms = np.concatenate([run["latency_ms"] for run in one])
    many_ms = np.concatenate([run["latency_ms"] for run in many])
    errors = [run["first_error"] for run in one + many if run["first_error"]]
    return {
        "c1_p50_ms": _percentile(one_ms, 50),
        "c1_p99_ms": _percentile(one_ms, 99),
        "throughput_rps": len(many_ms) / sum(run["elapsed_s"] for run in many),
        "throughput_rps_by_round": [run["completed_per_s"] for run in many],
        f"c{concurrency}_p50_ms": _percentile(many_ms, 50),
        "requests": len(one_ms) + len(many_ms),
        "errors": sum(run["errors"] for run in one + many),
        "first_error": errors[0] if errors else None,
    }


async def _closed_loop(
    base_url: str, path: str, body: dict[str, Any], concurrency: int, duration_s: float
) -> dict[str, Any]:
    """`concurrency` requests always in flight for `duration_s`, each on its connection."""
    clients = [HttpClient(base_url, timeout_s=REQUEST_TIMEOUT_S) for _ in range(concurrency)]
    latency_ms: list[float] = []
    errors: list[str] = []
    deadline_s = time.perf_counter() + duration_s

    async def worker(client: HttpClient) -> None:
        while time.perf_counter() < deadline_s:
            sent_s = time.perf_counter()
            try:
                status, answer = await client.request("POST", path, body)
            except UpstreamConnectionError as error:
                errors.append(repr(error))
                await asyncio.sleep(0.01)  # a server that is down: no busy loop
                continue
            if status != 200:
                errors.append(f"HTTP {status}: {answer[:200]!r}")
                continue
            latency_ms.append((time.perf_counter() - sent_s) * 1000)

    started_s = time.perf_counter()
    try:
        await asyncio.gather(*(worker(client) for client in clients))
    finally:
        for client in clients:
            await client.aclose()
    elapsed_s = time.perf_counter() - started_s
    return {
        "latency_ms": np.array(latency_ms),
        "elapsed_s": elapsed_s,
        "completed_per_s": len(latency_ms) / elapsed_s,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


_Action = Callable[[httpx.AsyncClient], Awaitable[Any]]


class _Clients:
    """Keep-alive httpx clients taken in turn. One client slows down sharply with dozens of
    requests in flight (its connection pool's bookkeeping, encode/httpx#3215), which would
    measure the load generator instead of the servers."""

    def __init__(self, count: int = CLIENTS) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        self.all = [
            httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(REQUEST_TIMEOUT_S))
            for _ in range(count)
        ]
        self._turns = itertools.cycle(self.all)

    def next(self) -> httpx.AsyncClient:
        return next(self._turns)

    async def __aenter__(self) -> _Clients:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for client in self.all:
            await client.aclose()


async def _read_all(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> float:
    """Milliseconds from sending the request to the end of its answer."""
    started_s = time.perf_counter()
    async with client.stream("POST", url, json=body) as response:
        await response.aread()
    if response.status_code != 200:
        raise _Failed(f"HTTP {response.status_code}: {response.text[:200]}")
    return (time.perf_counter() - started_s) * 1000


async def _token_trips(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], text_of: Callable[[Any], str]
) -> np.ndarray:
    """Milliseconds from each token's send time (its text) to the moment it was read."""
    trips_ms = []
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise _Failed(f"HTTP {response.status_code}: {response.text[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            read_ns = time.monotonic_ns()
            for sent_ns in text_of(json.loads(line.removeprefix("data:"))).split():
                trips_ms.append((read_ns - int(sent_ns)) / 1e6)
    return np.array(trips_ms)


def _triton_text(event: Any) -> str:
    return str(event.get("text_output", ""))


def _completion_text(event: Any) -> str:
    choices = event.get("choices") or []
    return str(choices[0].get("text") or "") if choices else ""


async def _open_loop(
    action: _Action,
    clients: _Clients,
    rate_per_s: float,
    duration_s: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Poisson arrivals; each request starts at its time whatever is still in flight."""
    gaps_s = rng.exponential(1 / rate_per_s, int(rate_per_s * duration_s * 2) + 10)
    offsets_s = np.cumsum(gaps_s)
    offsets_s = offsets_s[offsets_s < duration_s]
    start_s = time.perf_counter()
    last_done_s = start_s

    async def fire(scheduled_s: float) -> tuple[float, Any]:
        nonlocal last_done_s
        lag_ms = (time.perf_counter() - scheduled_s) * 1000
        result = await action(clients.next())
        last_done_s = max(last_done_s, time.perf_counter())
        return lag_ms, result

    tasks = []
    for offset_s in offsets_s:
        delay_s = start_s + offset_s - time.perf_counter()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        tasks.append(asyncio.create_task(fire(start_s + offset_s)))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    done = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    errors = [repr(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
    return {
        "requests": len(done),
        "completed_per_s": len(done) / max(last_done_s - start_s, 1e-9),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "send_lag_ms": np.array([lag for lag, _ in done]),
        "results": [result for _, result in done],
    }


def _report(
    runs: dict[str, dict[str, Any]], compared: dict[str, dict[str, Any]], workers: int,
    options: BenchOptions,
) -> dict[str, Any]:  # fmt: skip
    for name, run in [*runs.items(), *compared.items()]:
        if run["requests"] == 0:
            raise RuntimeError(f"bench gateway: every {name} request failed: {run['first_error']}")
    sides = {}
    for side in ("direct", "gateway"):
        latency_ms = np.array(runs[side]["results"])
        trips_ms = np.concatenate(runs[f"{side}_stream"]["results"])
        sides[side] = {
            "p50": _percentile(latency_ms, 50),
            "p99": _percentile(latency_ms, 99),
            "mean": float(latency_ms.mean()),
            "stream_token_trip_p50": _percentile(trips_ms, 50),
            "stream_token_trip_p99": _percentile(trips_ms, 99),
            "stream_tokens": len(trips_ms),
            "requests": runs[side]["requests"],
            "errors": runs[side]["errors"] + runs[f"{side}_stream"]["errors"],
            "first_error": runs[side]["first_error"] or runs[f"{side}_stream"]["first_error"],
            "send_lag_p99": _percentile(runs[side]["send_lag_ms"], 99),
            "completed_per_s": runs[side]["completed_per_s"],
        }
    direct, gateway = sides["direct"], sides["gateway"]
    return {
        "added_latency_ms": {p: gateway[p] - direct[p] for p in ("p50", "p99")},
        "stream_chunk_added_ms": {
            p: gateway[f"stream_token_trip_{p}"] - direct[f"stream_token_trip_{p}"]
            for p in ("p50", "p99")
        },
        "max_rps": compared["gateway"]["throughput_rps"],
        "side_by_side": compared,
        "against_bare_proxy": _against_bare_proxy(compared),
        "library_client": _library_client(compared),
        "setting": asdict(options) | {
            "compare_workers": workers,
            "compare_workers_asked": options.compare_workers,
            "compare_scoreboard": f"redis {options.redis_url}" if workers > 1 else "memory",
            "compare_gateway": f"length model {LENGTH_MODEL}, performance model "
            f"{PERFORMANCE_PROFILE}: prediction and planned admission on; no GPU backend",
            "compare_load": "closed loops over the httptools client, one keep-alive "
            "connection per request in flight",
            "bare_proxy": "throttllem.bench.bare_proxy: FastAPI + httpx pass-through",
            "latency_gateway_workers": 1,
            "arrivals": "poisson, open loop",
            "load_clients": f"{CLIENTS} keep-alive httpx clients taken in turn (one client "
            "slows down with dozens of requests in flight: encode/httpx#3215)",
            "max_tokens": LATENCY_TOKENS,
            "stream_max_tokens": STREAM_TOKENS,
            "stream_token_interval_ms": STREAM_TOKEN_INTERVAL_MS,
            "stream_chunk_added": "median token trip (upstream send to client read, same "
            "machine's monotonic clock) through the gateway minus direct",
            "prompt": PROMPT,
            "upstream": "throttllem.instant_upstream, Triton generate_stream, no delay",
            "added_latency": "percentile of gateway latency minus the same percentile direct",
            "latency_from": "the moment each request is sent (send_lag_p99: how late the load "
            "generator sent against its schedule)",
            "load_event_loop": "asyncio" if _loop_factory() is None else "uvloop",
            "cpu_cores": os.cpu_count(),
            "shared_cores": "load generator, upstream and gateway share the machine's cores",
        },
        "direct_ms": direct,
        "gateway_ms": gateway,
    }  # fmt: skip


def _against_bare_proxy(compared: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each gateway's c=1 p50 and throughput as multiples of the bare proxy's."""
    bare = compared["bare_proxy"]
    ratios = {}
    for name in ("gateway", "gateway_aiohttp"):
        p50_ratio = compared[name]["c1_p50_ms"] / bare["c1_p50_ms"]
        throughput_ratio = compared[name]["throughput_rps"] / bare["throughput_rps"]
        ratios[name] = {
            "c1_p50_ratio": p50_ratio,
            "c1_p50_ratio_met": p50_ratio <= C1_P50_RATIO_MAX,
            "throughput_ratio": throughput_ratio,
            "throughput_ratio_met": throughput_ratio >= THROUGHPUT_RATIO_MIN,
        }
    return ratios


def _library_client(compared: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """aiohttp's client against the hand-written one, each figure as a relative change
    (positive: aiohttp is worse), and whether both are within `LIBRARY_WITHIN`."""
    own, library = compared["gateway"], compared["gateway_aiohttp"]
    p50_worse = library["c1_p50_ms"] / own["c1_p50_ms"] - 1
    throughput_worse = 1 - library["throughput_rps"] / own["throughput_rps"]
    return {
        "c1_p50_worse": p50_worse,
        "throughput_worse": throughput_worse,
        "within": LIBRARY_WITHIN,
        "library_within": max(p50_worse, throughput_worse) <= LIBRARY_WITHIN,
    }


def _percentile(values: np.ndarray, percent: float) -> float:
    return float(np.percentile(values, percent)) if len(values) else float("nan")


def _print(report: dict[str, Any]) -> None:
    s, direct, gateway = report["setting"], report["direct_ms"], report["gateway_ms"]
    added, chunk = report["added_latency_ms"], report["stream_chunk_added_ms"]
    print(f"gateway overhead: instant Triton upstream, open-loop Poisson {s['rate_per_s']:g} req/s "
          f"for {s['duration_s']:g} s, max_tokens {s['max_tokens']}, {s['cpu_cores']} cores "
          "shared by load generator, upstream and gateway")  # fmt: skip
    print(f"  {'measure':<40} {'direct':>8} {'gateway':>8} {'added':>8}   target")
    rows = [
        ("latency p50 ms", "p50", added["p50"], TARGETS_MS["added_p50"]),
        ("latency p99 ms", "p99", added["p99"], TARGETS_MS["added_p99"]),
        (f"stream token trip p50 ms ({s['stream_rate_per_s']:g} streams/s)",
         "stream_token_trip_p50", chunk["p50"], TARGETS_MS["stream_chunk_added_p50"]),
    ]  # fmt: skip
    for label, key, value, target in rows:
        met = "met" if value <= target else "MISSED"
        print(f"  {label:<40} {direct[key]:>8.3f} {gateway[key]:>8.3f} {value:>8.3f}   "
              f"<= {target:g} ms ({met})")  # fmt: skip
    _print_side_by_side(report)
    for name, side in (("direct", direct), ("gateway", gateway)):
        error = f", first: {side['first_error']}" if side["errors"] else ""
        print(f"  {name}: {side['requests']} requests ({side['completed_per_s']:.0f}/s completed), "
              f"{side['errors']} errors{error}; send lag p99 {side['send_lag_p99']:.2f} ms; "
              f"{side['stream_tokens']} streamed tokens timed, trip p99 "
              f"{side['stream_token_trip_p99']:.2f} ms")  # fmt: skip


def _print_side_by_side(report: dict[str, Any]) -> None:
    s, compared = report["setting"], report["side_by_side"]
    workers = s["compare_workers"]
    note = "" if workers == s["compare_workers_asked"] else " (serve has no --workers)"
    concurrency = s["compare_concurrency"]
    print(f"side by side: closed loops of {s['compare_duration_s']:g} s, {workers} worker(s) "
          f"each{note}; the gateway with prediction, planned admission and scoreboard "
          f"{s['compare_scoreboard']}")  # fmt: skip
    print(f"  {'server':<28} {'c=1 p50 ms':>11} {'c=1 p99 ms':>11} "
          f"{f'c={concurrency} req/s':>12} {'errors':>7}")  # fmt: skip
    labels = {"direct": "upstream, direct", "bare_proxy": "bare FastAPI+httpx proxy",
              "gateway": "gateway (httptools client)", "gateway_aiohttp": "gateway (aiohttp client)"}  # fmt: skip
    for name, label in labels.items():
        row = compared[name]
        error = f"  first: {row['first_error']}" if row["errors"] else ""
        print(f"  {label:<28} {row['c1_p50_ms']:>11.3f} {row['c1_p99_ms']:>11.3f} "
              f"{row['throughput_rps']:>12.0f} {row['errors']:>7}{error}")  # fmt: skip
    for name, ratios in report["against_bare_proxy"].items():
        p50_met = "met" if ratios["c1_p50_ratio_met"] else "MISSED"
        rps_met = "met" if ratios["throughput_ratio_met"] else "MISSED"
        print(f"  {labels[name]} / bare proxy: c=1 p50 {ratios['c1_p50_ratio']:.2f}x "
              f"(<= {C1_P50_RATIO_MAX:g}x, {p50_met}); c={concurrency} req/s "
              f"{ratios['throughput_ratio']:.2f}x (>= {THROUGHPUT_RATIO_MIN:g}x, {rps_met})")  # fmt: skip
    library = report["library_client"]
    verdict = "within" if library["library_within"] else "not within"
    print(f"  aiohttp against httptools: c=1 p50 {library['c1_p50_worse']:+.1%}, "
          f"req/s {-library['throughput_worse']:+.1%}: {verdict} {LIBRARY_WITHIN:.0%}")  # fmt: skip


def free_ports(count: int) -> list[int]:
    """`count` ports free on 127.0.0.1 now (the tests use it too)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def _server(command: list[str], env: dict[str, str], ready_url: str) -> Iterator[None]:
    """A child process in a session of its own, ready when `ready_url` answers 200."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_ready(process, ready_url, log)
            yield
        finally:
            _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: IO[bytes]) -> None:
    deadline_s = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline_s:
        if process.poll() is not None:
            break
        with suppress(httpx.TransportError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    log.seek(0)
    tail = log.read().decode(errors="replace")[-2000:]
    raise RuntimeError(f"{process.args} was not ready at {url}:\n{tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group (workers included), SIGKILL what outlives it."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT_S)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
