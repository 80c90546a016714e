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
their medians. `max_rps` is a closed loop of many concurrent requests against a fresh
gateway for a few seconds.

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
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import numpy as np

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


@dataclass(frozen=True)
class BenchOptions:
    rate_per_s: float = 200.0
    duration_s: float = 10.0
    stream_rate_per_s: float = 20.0
    warmup_s: float = 1.0
    max_rps_concurrency: int = 64
    max_rps_duration_s: float = 3.0
    max_rps_workers: int = 2
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
    workers = options.max_rps_workers if serve_has_workers_flag() else 1
    with (
        _server(upstream_command(upstream_port), os.environ.copy(), f"{upstream_url}/v2/health/ready"),
        _server(upstream_command(paced_port, STREAM_TOKEN_INTERVAL_MS), os.environ.copy(),
                f"{paced_url}/v2/health/ready"),
    ):  # fmt: skip
        with _server(gateway_command(gateway_port), _gateway_env(paced_url), f"{gateway_url}/health/ready"):  # fmt: skip
            runs = _run(_stream_runs(paced_url, gateway_url, options))
        env = _gateway_env(upstream_url)
        with _server(gateway_command(gateway_port), env, f"{gateway_url}/health/ready"):
            runs |= _run(_latency_runs(upstream_url, gateway_url, options))
        workers_env = (env | _scoreboard_env(options.redis_url)) if workers > 1 else env
        with _server(
            gateway_command(gateway_port, workers), workers_env, f"{gateway_url}/health/ready"
        ):
            max_rps = _run(_max_rps(gateway_url, options))
    report = _report(runs, max_rps, workers, options)
    _print(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def upstream_command(port: int, token_interval_ms: float = 0.0) -> list[str]:
    command = [sys.executable, "-m", "throttllem.instant_upstream", "--port", str(port)]
    return [*command, "--model", MODEL, "--token-interval-ms", str(token_interval_ms)]


def gateway_command(port: int, workers: int = 1) -> list[str]:
    command = [sys.executable, "-m", "throttllem", "--log-level", "WARNING", "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    return command + (["--workers", str(workers)] if workers > 1 else [])


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


async def _max_rps(gateway_url: str, options: BenchOptions) -> float:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": LATENCY_TOKENS}

    async def action(client: httpx.AsyncClient) -> float:
        return await _read_all(client, f"{gateway_url}/v1/completions", body)

    concurrency = options.max_rps_concurrency
    async with _Clients() as clients:
        await _closed_loop(action, clients, concurrency, options.warmup_s)
        return await _closed_loop(action, clients, concurrency, options.max_rps_duration_s)


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


async def _closed_loop(
    action: _Action, clients: _Clients, concurrency: int, duration_s: float
) -> float:
    """Completed requests per second with `concurrency` requests always in flight."""
    deadline_s = time.perf_counter() + duration_s
    completed = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal completed
        while time.perf_counter() < deadline_s:
            with suppress(_Failed, httpx.HTTPError):
                await action(client)
                completed += 1

    started_s = time.perf_counter()
    await asyncio.gather(*(worker(clients.next()) for _ in range(concurrency)))
    return completed / (time.perf_counter() - started_s)


def _report(
    runs: dict[str, dict[str, Any]], max_rps: float, workers: int, options: BenchOptions
) -> dict[str, Any]:
    for name, run in runs.items():
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
        "max_rps": max_rps,
        "setting": asdict(options) | {
            "max_rps_workers": workers,
            "max_rps_workers_asked": options.max_rps_workers,
            "max_rps_scoreboard": f"redis {options.redis_url}" if workers > 1 else "memory",
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
    workers = s["max_rps_workers"]
    note = "" if workers == s["max_rps_workers_asked"] else " (serve has no --workers)"
    print(f"  max_rps: {report['max_rps']:.0f} completed req/s, closed loop of "
          f"{s['max_rps_concurrency']} for {s['max_rps_duration_s']:g} s, {workers} worker(s){note}, "
          f"scoreboard {s['max_rps_scoreboard']}")  # fmt: skip
    for name, side in (("direct", direct), ("gateway", gateway)):
        error = f", first: {side['first_error']}" if side["errors"] else ""
        print(f"  {name}: {side['requests']} requests ({side['completed_per_s']:.0f}/s completed), "
              f"{side['errors']} errors{error}; send lag p99 {side['send_lag_p99']:.2f} ms; "
              f"{side['stream_tokens']} streamed tokens timed, trip p99 "
              f"{side['stream_token_trip_p99']:.2f} ms")  # fmt: skip


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
