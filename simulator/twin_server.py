"""`throttllem twin`: the engine twin served by a real Triton server through PyTriton.

One process holds the engine (paced on the wall clock), the GPU control API (uvicorn,
in a thread) and PyTriton's proxy; Triton itself runs as a child process in the same
process group, so whoever started this process can stop all of it at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sysconfig
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import uvicorn

from predictor.tokenizer import PromptTokenizer
from simulator.control_api import create_control_app
from simulator.engine import Engine
from simulator.engine_sizes import (
    engine_model_name,
    ensemble_model_name,
    size_label,
    write_ensemble,
)
from simulator.profile import DEFAULT_PROFILE, load_profile
from simulator.realtime import RealtimeEngine
from simulator.responses import LengthDistribution, Responses
from simulator.triton_model import INPUTS, MODEL_NAME, OUTPUTS, TwinModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TwinOptions:
    host: str = "127.0.0.1"
    http_port: int = 8010
    grpc_port: int = 8011
    metrics_port: int = 8012
    control_port: int = 8013
    profile: str = DEFAULT_PROFILE
    scheduler_policy: str | None = None
    responses_file: Path | None = None
    seed: int = 0
    triton_log_file: Path | None = None
    parent_pid: int | None = None
    # More engine sizes, each served as `ensemble-<label>` and loaded on demand through
    # the repository API (simulator/engine_sizes.py); the primary's is loaded at start.
    scale_profiles: tuple[str, ...] = ()
    repository_token: str | None = None  # header triton-access-token; None: a random one


def prepare_python_backend_environment() -> None:
    """Point the Triton Python-backend stub at this interpreter's libpython.

    The stub links `libpython3.x.so`; under a pyenv (or any non-system) Python the
    system copy differs from the running interpreter's standard library, and model load
    fails with "'_thread.RLock' object has no attribute '_recursion_count'". PyTriton
    passes our environment to Triton, so putting LIBDIR first fixes the lookup.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir not in current.split(os.pathsep):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, current) if p)


def serve_twin(options: TwinOptions) -> None:
    """Serve until SIGINT or SIGTERM; Triton and its stubs are stopped before returning."""
    prepare_python_backend_environment()
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy, TritonSecurityConfig
    from pytriton.utils.workspace import Workspace

    # Before Triton starts: bad options fail fast.
    engine, responses = build_twin(options)
    sizes = {size_label(options.profile): (engine, responses)}
    for profile in options.scale_profiles:
        sizes[size_label(profile)] = build_twin(replace(options, profile=profile))
    if len(sizes) != len(options.scale_profiles) + 1:
        raise TwinOptionsError("every engine size needs its own label (the profile's last part)")
    control = _start_control_api(engine, options)
    for sized_engine, _ in sizes.values():
        sized_engine.start()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)  # even if started with SIGINT ignored
    config = TritonConfig(
        http_address=options.host,
        http_port=options.http_port,
        grpc_address=options.host,
        grpc_port=options.grpc_port,
        metrics_address=options.host,
        metrics_port=options.metrics_port,
        log_file=options.triton_log_file,
    )
    workspace = Workspace()
    if options.parent_pid is not None:
        _exit_with_parent(options.parent_pid)

    def bind(triton: Triton, name: str, model: TwinModel) -> None:
        triton.bind(
            model_name=name,
            infer_func=model,
            inputs=[
                Tensor(name=t.name, dtype=t.dtype, shape=(1,), optional=t.optional) for t in INPUTS
            ],
            outputs=[Tensor(name=t.name, dtype=t.dtype, shape=(1,)) for t in OUTPUTS],
            config=ModelConfig(decoupled=True, batching=False),
            strict=False,
        )

    try:
        with Triton(
            config=config,
            workspace=workspace,
            security_config=TritonSecurityConfig(access_token=options.repository_token),
            # Model files in the repository, so that Triton can load ensembles over them.
            triton_lifecycle_policy=TritonLifecyclePolicy(local_model_store=bool(options.scale_profiles)),
        ) as triton:  # fmt: skip
            bind(triton, MODEL_NAME, TwinModel(engine, responses))
            if options.scale_profiles:
                for label, (sized_engine, sized_responses) in sizes.items():
                    bind(triton, engine_model_name(label), TwinModel(sized_engine, sized_responses))
            triton.run()
            if options.scale_profiles:
                for label in sizes:
                    write_ensemble(workspace.model_store_path, label)
                _load_ensemble(options, ensemble_model_name(size_label(options.profile)))
            log.info(
                "twin ready: Triton HTTP on %s:%d, GPU control on %s:%d; engine sizes %s",
                options.host,
                options.http_port,
                options.host,
                options.control_port,
                ", ".join(sizes),
            )
            with contextlib.suppress(KeyboardInterrupt):  # SIGINT or SIGTERM: stop
                while triton.is_alive():
                    time.sleep(1.0)
    finally:
        for sized_engine, _ in sizes.values():
            sized_engine.stop()
        control.should_exit = True


def _load_ensemble(options: TwinOptions, name: str) -> None:
    """Load the primary size's ensemble, as a scaler would, once Triton is up."""
    import httpx

    headers = {"triton-access-token": options.repository_token or ""}
    url = f"http://{options.host}:{options.http_port}/v2/repository/models/{name}/load"
    response = httpx.post(url, headers=headers, json={}, timeout=120.0)
    if response.status_code != 200:
        raise RuntimeError(f"Triton did not load {name}: {response.text[:300]}")


class TwinOptionsError(ValueError):
    """The twin cannot start with these options; the message says what to change."""


def build_twin(options: TwinOptions) -> tuple[RealtimeEngine, Responses]:
    """The engine and its answers, before anything is served (bad options fail here)."""
    try:
        profile = load_profile(options.profile)
        engine = Engine(profile, seed=options.seed, policy=options.scheduler_policy or "")
        recorded = (
            Responses.load_recorded(options.responses_file) if options.responses_file else None
        )
    except ValueError as error:
        raise TwinOptionsError(str(error)) from error
    lengths = LengthDistribution(profile.model.output_length_quantiles)
    responses = Responses(PromptTokenizer.from_file(), lengths, recorded)
    log.info(
        "twin %s: %d KV blocks, batch up to %d, %s; %d recorded responses",
        profile.name, engine.kv_capacity_blocks, profile.max_batch_size, engine.policy,
        responses.recorded_count,
    )  # fmt: skip
    return RealtimeEngine(engine), responses


def _start_control_api(engine: RealtimeEngine, options: TwinOptions) -> uvicorn.Server:
    config = uvicorn.Config(
        create_control_app(engine),
        host=options.host,
        port=options.control_port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="twin-control-api", daemon=True).start()
    return server


def _exit_with_parent(parent_pid: int) -> None:
    """Stop (and so stop Triton) if the process that started us dies without telling us."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        log.warning("parent process %d is gone; stopping the twin", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="twin-parent-watch", daemon=True).start()


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
