"""`throttllem bench live-agreement`: the live replay and the virtual one measure the same
experiment.

One slice of a trace (the first `--duration-s` seconds at `--rate` req/s, `--lengths
model`) is made into one workload. The virtual `throttllem` replay runs it on the twin's
engine in virtual time; then `throttllem run` is started on free ports (the twin in a real
Triton server, the gateway with its embedded governor, on the settings' defaults: the
caller's THROTTLLEM_* variables are left out) and `replay --live` sends the same workload
to it in real time, a 300 s slice taking about 300 s, each request with its prompt text and
its promises (throttllem/replay/live.py). The live energy is the twin's GPU energy counter
as the gateway's `/metrics` reports it, from before the first request to after the last.

The runs agree when their SLO attainments are within `ATTAINMENT_TOLERANCE_PP` percentage
points and their energies within `ENERGY_TOLERANCE` of the virtual one's. It is a
benchmark, not a test: the live run shares this machine's cores and its wall clock.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

if TYPE_CHECKING:
    from throttllem.replay.simulate import Run

ATTAINMENT_TOLERANCE_PP = 2.0
ENERGY_TOLERANCE = 0.05
POLICY = "throttllem"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
SETTLE_S = 2.0  # after the warm-up request, for the governor's clock to settle


@dataclass(frozen=True)
class AgreementOptions:
    duration_s: float = 300.0
    rate: float = 0.6
    profile: str = "a100-40gb/llama-2-13b/tp1"
    trace: Path = Path("../shared/data/traces/AzureLLMInferenceTrace_conv.csv")
    alpaca_eval_dir: Path = Path("../shared/data/alpaca_eval")
    lengths: str = "model"
    slo: str = "paper"
    seed: int = 1


def bench_live_agreement(options: AgreementOptions, json_path: Path | None) -> dict[str, Any]:
    from throttllem.replay.live import drive
    from throttllem.replay.report import (
        ReplayOptions,
        build_scene,
        policy_report,
        run_policies,
        scene_report,
        write_json,
    )

    replay_options = ReplayOptions(
        trace=options.trace, profile=options.profile, rate=options.rate, slo=options.slo,
        duration_s=options.duration_s, policies=(POLICY,), lengths=options.lengths,
        seed=options.seed, alpaca_eval_dir=options.alpaca_eval_dir,
    )  # fmt: skip
    scene = build_scene(replay_options)
    workload, scale = scene.workload_at(options.rate)
    print(f"live agreement: {len(workload)} requests over {workload.span_s:.0f} s of "
          f"{options.trace.name} at {workload.rate_rps:.2f} req/s on {options.profile}, "
          f"lengths {options.lengths}, seed {options.seed}", file=sys.stderr)  # fmt: skip
    virtual = run_policies(scene, workload, [POLICY])[POLICY]
    print(f"  virtual {POLICY}: {virtual.wall_s:.1f} s; now the live run, about "
          f"{workload.span_s:.0f} s of wall clock", file=sys.stderr)  # fmt: skip
    with running_stack(options.profile) as stack:
        _warm_up(stack.base_url)
        live, failed = asyncio.run(drive(stack.base_url, workload, scene.slo, _Progress()))
    runs = {
        "virtual": policy_report(virtual, workload, scene.slo),
        "live": policy_report(live, workload, scene.slo),
    }
    report = {
        **scene_report(scene, workload, scale, None, None),
        "policy": POLICY,
        "runs": runs,
        "live": {"failed": failed, "stack": stack.command, "log": str(stack.log)},
        "agreement": agreement(runs["virtual"], runs["live"]),
        "requests": per_request(virtual, live),
        "setting": {key: str(value) if isinstance(value, Path) else value
                    for key, value in asdict(options).items()} | {
            "live_energy": "the twin's GPU energy counter (throttllem_gpu_energy_joules on the "
            "gateway's /metrics), from before the first request to after the last",
            "virtual_energy": "the twin's power model integrated from the first arrival to "
            "the last token, in virtual time",
            "cpu_cores": os.cpu_count(),
        },
    }  # fmt: skip
    print(markdown(report), end="")
    if json_path is not None:
        write_json(report, json_path)
    return report


def agreement(virtual: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """The live run's differences from the virtual one's, and whether they are within the
    tolerances (an energy the live run could not read is a failure)."""
    attainment_pp = (live["slo_attainment"] - virtual["slo_attainment"]) * 100
    energy = (
        live["energy_j"] / virtual["energy_j"] - 1
        if live["energy_j"] is not None and virtual["energy_j"]
        else math.nan
    )
    attainment_ok = abs(attainment_pp) <= ATTAINMENT_TOLERANCE_PP
    energy_ok = bool(abs(energy) <= ENERGY_TOLERANCE)  # NaN: False
    return {
        "attainment_pp": attainment_pp,
        "energy_relative": energy,
        "mean_freq_mhz": live["mean_freq_mhz"] - virtual["mean_freq_mhz"],
        "attainment_tolerance_pp": ATTAINMENT_TOLERANCE_PP,
        "energy_tolerance": ENERGY_TOLERANCE,
        "attainment_ok": attainment_ok,
        "energy_ok": energy_ok,
        "passed": attainment_ok and energy_ok,
    }


def per_request(virtual: Run, live: Run) -> dict[str, Any]:
    """Each request's TTFT and E2E in both runs, and which kept their promises in one run
    only: where the two disagree, request by request."""
    met_virtual, met_live = virtual.met.astype(bool), live.met.astype(bool)
    return {
        "met_only_live": np.flatnonzero(met_live & ~met_virtual).tolist(),
        "met_only_virtual": np.flatnonzero(met_virtual & ~met_live).tolist(),
        "virtual_ttft_ms": (virtual.ttft_s * 1000).tolist(),
        "live_ttft_ms": (live.ttft_s * 1000).tolist(),
        "virtual_e2e_ms": (virtual.e2e_s * 1000).tolist(),
        "live_e2e_ms": (live.e2e_s * 1000).tolist(),
    }


def markdown(report: dict[str, Any]) -> str:
    runs, agreed = report["runs"], report["agreement"]
    rows = [
        "| run | SLO attainment | energy kJ | mean MHz | TTFT p99 ms | TBT p99 ms | E2E p99 ms "
        "| output tokens | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in runs.items():
        energy = f"{run['energy_j'] / 1000:.2f}" if run["energy_j"] is not None else "—"
        rows.append(
            f"| {name} {report['policy']} | {run['slo_attainment'] * 100:.1f} % | {energy} "
            f"| {run['mean_freq_mhz']:.0f} | {run['ttft_ms']['p99']:.0f} "
            f"| {run['tbt_ms']['p99']:.0f} | {run['e2e_ms']['p99']:.0f} "
            f"| {run['output_tokens']} | {run['wall_s']:.1f} |"
        )
    energy = agreed["energy_relative"]
    rows.append(
        f"| live - virtual | {agreed['attainment_pp']:+.1f} pp | {energy * 100:+.1f} % "
        f"| {agreed['mean_freq_mhz']:+.0f} | | | | | |"
    )
    verdict = [
        f"attainment within {ATTAINMENT_TOLERANCE_PP:g} pp: "
        f"{'PASS' if agreed['attainment_ok'] else 'FAIL'}",
        f"energy within {ENERGY_TOLERANCE * 100:g} %: {'PASS' if agreed['energy_ok'] else 'FAIL'}",
        f"failed live requests: {report['live']['failed']}",
        f"requests met in one run only: {len(report['requests']['met_only_live'])} live, "
        f"{len(report['requests']['met_only_virtual'])} virtual",
    ]
    return "\n".join(rows) + "\n\n" + "; ".join(verdict) + "\n"


@dataclass(frozen=True)
class RunningStack:
    base_url: str
    command: list[str]
    log: Path
    control_url: str  # the twin's GPU control API


@contextmanager
def running_stack(profile: str) -> Iterator[RunningStack]:
    """`throttllem run --twin-profile PROFILE` on free ports, once its gateway is ready;
    stopped as Ctrl-C stops it (the twin with it), and killed if it will not stop."""
    from throttllem.bench.gateway import free_ports
    from throttllem.stack import TwinPorts, triton_log_file

    gateway, http, grpc, metrics, control = free_ports(5)
    ports = TwinPorts(http=http, grpc=grpc, metrics=metrics, control=control)
    command = [
        sys.executable, "-m", "throttllem", "--log-level", "WARNING", "run",
        "--host", "127.0.0.1", "--port", str(gateway), "--twin-profile", profile,
        "--twin-http-port", str(ports.http), "--twin-grpc-port", str(ports.grpc),
        "--twin-metrics-port", str(ports.metrics), "--twin-control-port", str(ports.control),
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("THROTTLLEM_")}
    log_path = Path(tempfile.gettempdir()) / f"throttllem-live-agreement-{gateway}.log"
    base_url = f"http://127.0.0.1:{gateway}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        _wait_ready(process, f"{base_url}/health/ready", log_path)
        print(f"  stack ready at {base_url} (log {log_path}, Triton's "
              f"{triton_log_file(ports)})", file=sys.stderr)  # fmt: skip
        yield RunningStack(base_url, command, log_path, f"http://127.0.0.1:{ports.control}")
    finally:
        _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline_s = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline_s and process.poll() is None:
        with suppress(httpx.TransportError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.25)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"throttllem run was not ready at {url}:\n{tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT, as Ctrl-C: the gateway stops and `run` stops the twin's process group.
    SIGTERM, then SIGKILL, to `run`'s own group if it outlives STOP_TIMEOUT_S."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_S)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_S / 2)
    process.wait()


def _warm_up(base_url: str) -> None:
    """One short request, so that the first of the slice does not pay for cold caches
    (the length model's first run, Triton's first call, the client's first connection)."""
    model = httpx.get(f"{base_url}/v1/models", timeout=10.0).json()["data"][0]["id"]
    body = {"model": model, "prompt": "Say hello.", "max_tokens": 1}
    httpx.post(f"{base_url}/v1/completions", json=body, timeout=60.0).raise_for_status()
    time.sleep(SETTLE_S)


class _Progress:
    """A line on stderr every tenth of the requests finished."""

    def __init__(self) -> None:
        self._started_s = time.monotonic()
        self._reported = 0

    def __call__(self, fraction: float) -> None:
        tenth = int(fraction * 10)
        if tenth > self._reported:
            self._reported = tenth
            print(f"  live: {fraction * 100:3.0f} % of the requests done after "
                  f"{time.monotonic() - self._started_s:.0f} s", file=sys.stderr)  # fmt: skip
