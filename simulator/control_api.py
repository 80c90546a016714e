"""HTTP control API of the simulated GPUs (what NVML offers, over HTTP) and the twin's
Prometheus metrics.

The governor's `simulated` backend talks to this exactly as its `nvml` backend talks to
NVML: one index per GPU of the tensor-parallel instance.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from simulator.engine import Engine
from simulator.gpu import UnsupportedClockError
from simulator.metrics import twin_registry
from simulator.realtime import RealtimeEngine


class LockedClocks(BaseModel):
    min_mhz: int = Field(gt=0)
    max_mhz: int = Field(gt=0)


class GpuState(BaseModel):
    index: int
    name: str
    supported_clocks_mhz: list[int]
    default_clock_mhz: int
    clock_mhz: int
    locked_clock_mhz: int | None
    clock_switch_latency_ms: float
    power_w: float
    energy_mj: float


def create_control_app(runner: RealtimeEngine) -> FastAPI:
    app = FastAPI(title="throttllem twin: GPU control and metrics", docs_url=None, redoc_url=None)
    registry = twin_registry(runner)

    def state(engine: Engine, index: int, now_s: float) -> GpuState:
        if not 0 <= index < len(engine.gpus):
            raise HTTPException(
                404, f"no GPU {index}: this instance has GPUs 0-{len(engine.gpus) - 1}"
            )
        gpu = engine.gpus[index]
        return GpuState(
            index=index,
            name=gpu.spec.name,
            supported_clocks_mhz=gpu.spec.supported_clocks_mhz(),
            default_clock_mhz=gpu.default_clock_mhz,
            clock_mhz=gpu.clock_mhz(now_s),
            locked_clock_mhz=gpu.locked_clock_mhz,
            clock_switch_latency_ms=gpu.spec.clock_switch_latency_s * 1000,
            power_w=gpu.power_w(),
            energy_mj=gpu.energy_mj_at(now_s),
        )

    @app.get("/gpus")
    def list_gpus() -> list[GpuState]:
        return runner.locked(
            lambda engine, now_s: [state(engine, i, now_s) for i in range(len(engine.gpus))]
        )

    @app.get("/gpus/{index}")
    def get_gpu(index: int) -> GpuState:
        return runner.locked(lambda engine, now_s: state(engine, index, now_s))

    @app.put("/gpus/{index}/locked-clocks")
    def lock_clocks(index: int, clocks: LockedClocks) -> GpuState:
        if clocks.min_mhz != clocks.max_mhz:
            raise HTTPException(
                400, "the simulated GPU locks one clock: min_mhz must equal max_mhz"
            )

        def lock(engine: Engine, now_s: float) -> GpuState:
            state(engine, index, now_s)  # 404 for an unknown index
            try:
                engine.gpus[index].lock_clock(clocks.max_mhz, now_s)
            except UnsupportedClockError as error:
                raise HTTPException(400, str(error)) from error
            return state(engine, index, now_s)

        return runner.locked(lock)

    @app.delete("/gpus/{index}/locked-clocks")
    def reset_clocks(index: int) -> GpuState:
        def reset(engine: Engine, now_s: float) -> GpuState:
            state(engine, index, now_s)
            engine.gpus[index].reset_clock(now_s)
            return state(engine, index, now_s)

        return runner.locked(reset)

    @app.get("/iterations")
    def iterations(since: int = 0) -> dict[str, object]:
        """The iteration log (simulator/iteration_log.py) from the `since`-th record."""
        records, count, idle_w = runner.locked(
            lambda engine, now_s: (runner.log.since(since), len(runner.log.records),
                                   runner.log.idle_power_w)
        )  # fmt: skip
        return {"idle_power_w": idle_w, "count": count,
                "records": [r.to_json() for r in records]}  # fmt: skip

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
