"""Process wiring for `throttllem run` and `throttllem serve`.

`run` starts the twin as a child process in a session of its own (so Triton and its
Python-backend stubs can be stopped as one group), waits until its model is ready,
then serves the gateway with the embedded governor in this process until Ctrl-C.

`serve --workers N` (N > 1) gives the workers a metrics directory of their own, so that
each `/metrics` scrape answers with all of them (gateway/metrics.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from gateway.metrics import MULTIPROC_DIR_VARIABLE
from governor.settings import GpuBackendKind
from throttllem.logs import current_level, uvicorn_log_config
from throttllem.orphan import MASTER_PID_VARIABLE, PRIVATE_METRICS_VARIABLE
from throttllem.settings import Settings
from throttllem.wiring import create_gateway_app

log = logging.getLogger(__name__)

TWIN_READY_TIMEOUT_S = 120.0
TWIN_STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class TwinPorts:
    http: int = 8010
    grpc: int = 8011
    metrics: int = 8012
    control: int = 8013


def triton_log_file(ports: TwinPorts) -> Path:
    return Path(tempfile.gettempdir()) / f"throttllem-triton-{ports.http}.log"


def serve_gateway(host: str | None, port: int | None, workers: int = 1) -> int:
    settings = _with_address(Settings(), host, port)
    if workers <= 1:
        _serve(settings)
        return 0
    if settings.redis_url is None:
        log.error("%d workers need a shared scoreboard: set THROTTLLEM_REDIS_URL", workers)
        return 2
    # Each worker process builds the app from the same THROTTLLEM_* environment, and
    # stops if this process dies (throttllem/orphan.py).
    os.environ[MASTER_PID_VARIABLE] = str(os.getpid())
    with shared_metrics_directory(), suppress(KeyboardInterrupt):
        uvicorn.run("throttllem.wiring:create_gateway_app", factory=True, host=settings.host,
                    port=settings.port, workers=workers,
                    log_config=uvicorn_log_config(current_level()))  # fmt: skip
    return 0


@contextmanager
def shared_metrics_directory() -> Iterator[Path]:
    """PROMETHEUS_MULTIPROC_DIR for the workers about to be spawned: the user's if set
    (created if missing, never removed), else a fresh private one removed on the way out.

    uvicorn spawns its workers (fresh interpreters that inherit this environment), so they
    import prometheus_client with the variable set and write their values there. This
    process imported it before, and never writes there.
    """
    own = os.environ.get(MULTIPROC_DIR_VARIABLE)
    if own:
        directory = Path(own)
        directory.mkdir(parents=True, exist_ok=True)
        if any(directory.glob("*.db")):
            log.warning("%s=%s holds an earlier run's metrics, which the scrapes will add: "
                        "empty it between runs", MULTIPROC_DIR_VARIABLE, directory)  # fmt: skip
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="throttllem-metrics-",
                                     ignore_cleanup_errors=True) as private:  # fmt: skip
        os.environ[MULTIPROC_DIR_VARIABLE] = os.environ[PRIVATE_METRICS_VARIABLE] = private
        try:
            yield Path(private)
        finally:
            del os.environ[MULTIPROC_DIR_VARIABLE], os.environ[PRIVATE_METRICS_VARIABLE]


def run_stack(
    host: str | None,
    port: int | None,
    twin_ports: TwinPorts,
    twin_args: list[str],
    twin_profile: str,
) -> int:
    """The served model is named after the twin profile's, and the shipped predictors for
    it are loaded, unless THROTTLLEM_* variables say otherwise."""
    from predictor.shipped import length_model_path, performance_model_path, power_model_path
    from simulator.capacity import prefill_cost
    from simulator.profile import load_profile

    profile = load_profile(twin_profile)
    prefill = prefill_cost(profile)
    settings = Settings()
    defaults = {
        "served_model_name": twin_profile.split("/")[1],
        "length_model_path": length_model_path(profile.model.recorded_responses),
        "performance_model_path": performance_model_path(twin_profile),
        "power_model_path": power_model_path(twin_profile),
        "context_window_tokens": profile.model.context_window_tokens,
        "engine_max_batch": profile.max_batch_size,
        "engine_kv_capacity_blocks": profile.kv_capacity_blocks,
        "engine_tokens_per_block": profile.tokens_per_block,
        "engine_scheduler_policy": profile.scheduler_policy,
        "prefill_us_per_token": prefill.s_per_token * 1e6,
        "prefill_ns_per_square_token": prefill.s_per_square_token * 1e9,
        # every GPU of a tensor-parallel twin is governed (and metered), not the first only
        "gpu_indices": list(range(profile.tensor_parallel)),
        "energy_idle_power_w": profile.gpu.idle_power_w,
    }
    update: dict[str, object] = {
        "backend_url": f"http://127.0.0.1:{twin_ports.http}",
        "gpu_backend": GpuBackendKind.simulated,
        "gpu_control_url": f"http://127.0.0.1:{twin_ports.control}",
    }
    update.update(
        {key: value for key, value in defaults.items() if key not in settings.model_fields_set}
    )
    settings = _with_address(settings, host, port).model_copy(update=update)
    with _twin_process(twin_ports, twin_args) as twin:
        if not _wait_until_ready(twin, settings.backend_url, settings.triton_model):
            return 1
        _print_banner(settings, twin_ports)
        _serve(settings)
    return 0


def _with_address(settings: Settings, host: str | None, port: int | None) -> Settings:
    update = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    return settings.model_copy(update=update)


def _serve(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM; a requested stop is a normal exit, not an error."""
    config = uvicorn.Config(
        create_gateway_app(settings), host=settings.host, port=settings.port,
        log_config=uvicorn_log_config(current_level()),
    )  # fmt: skip
    with suppress(KeyboardInterrupt):  # uvicorn re-raises the signal it shut down for
        uvicorn.Server(config).run()
    log.info("gateway stopped")


@contextmanager
def _twin_process(ports: TwinPorts, twin_args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    command = [
        *(sys.executable, "-m", "throttllem", "twin"),
        *("--http-port", str(ports.http), "--grpc-port", str(ports.grpc)),
        *("--metrics-port", str(ports.metrics), "--control-port", str(ports.control)),
        *("--triton-log-file", str(triton_log_file(ports)), "--parent-pid", str(os.getpid())),
        *twin_args,
    ]
    log.info("starting the twin: %s", " ".join(command))
    process = subprocess.Popen(command, start_new_session=True)
    try:
        yield process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the twin's whole process group, then SIGKILL whatever is left."""
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        return
    _signal_group(group, signal.SIGTERM)
    try:
        process.wait(timeout=TWIN_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("the twin did not stop in %.0f s; killing it", TWIN_STOP_TIMEOUT_S)
    _signal_group(group, signal.SIGKILL)  # Triton or a stub that outlived the twin
    process.wait()


def _signal_group(group: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(group, signum)


def _wait_until_ready(process: subprocess.Popen[bytes], base_url: str, model: str) -> bool:
    deadline_s = time.monotonic() + TWIN_READY_TIMEOUT_S
    url = f"{base_url}/v2/models/{model}/ready"
    while time.monotonic() < deadline_s:
        if process.poll() is not None:
            log.error("the twin exited with code %s before it was ready", process.returncode)
            return False
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    log.error("the twin was not ready after %.0f s", TWIN_READY_TIMEOUT_S)
    return False


def _print_banner(settings: Settings, twin_ports: TwinPorts) -> None:
    base = f"http://{settings.host}:{settings.port}"
    body = f'{{"model": "{settings.served_model_name}", "prompt": "Say hello", "max_tokens": 16}}'
    print(
        "\nthrottllem is serving.\n"
        f"  base URL:  {base}/v1\n"
        f"  try:       curl -s {base}/v1/completions -H 'Content-Type: application/json' "
        f"-d '{body}'\n"
        f"  metrics:   {base}/metrics\n"
        f"  twin:      Triton on http://127.0.0.1:{twin_ports.http} "
        f"(log: {triton_log_file(twin_ports)})\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )
