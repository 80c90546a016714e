"""HTTP control API of the simulated GPUs: what NVML offers, over HTTP.

The governor's `simulated` backend talks to this, exactly as its `nvml` backend talks
to NVML. Each device of the tensor-parallel instance has its own index.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from simulator.gpu import SimulatedGpu, UnsupportedClockError
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


def create_control_app(engine: RealtimeEngine) -> FastAPI:
    app = FastAPI(title="throttllem twin GPU control", docs_url=None, redoc_url=None)

    def state(gpu: SimulatedGpu, now_s: float) -> GpuState:
        return GpuState(
            index=0,
            name=gpu.spec.name,
            supported_clocks_mhz=gpu.spec.supported_clocks_mhz(),
            default_clock_mhz=gpu.default_clock_mhz,
            clock_mhz=gpu.clock_mhz(now_s),
            locked_clock_mhz=gpu.locked_clock_mhz,
            clock_switch_latency_ms=gpu.spec.clock_switch_latency_s * 1000,
            power_w=gpu.power_w(),
            energy_mj=gpu.energy_mj(),
        )

    def check_index(index: int) -> None:
        if index != 0:
            raise HTTPException(404, f"no GPU {index}: this instance has GPU 0 only")

    @app.get("/gpus")
    def list_gpus() -> list[GpuState]:
        return [engine.with_gpu(state)]

    @app.get("/gpus/{index}")
    def get_gpu(index: int) -> GpuState:
        check_index(index)
        return engine.with_gpu(state)

    @app.put("/gpus/{index}/locked-clocks")
    def lock_clocks(index: int, clocks: LockedClocks) -> GpuState:
        check_index(index)
        if clocks.min_mhz != clocks.max_mhz:
            raise HTTPException(
                400, "the simulated GPU locks one clock: min_mhz must equal max_mhz"
            )

        def lock(gpu: SimulatedGpu, now_s: float) -> GpuState:
            try:
                gpu.lock_clock(clocks.max_mhz, now_s)
            except UnsupportedClockError as error:
                raise HTTPException(400, str(error)) from error
            return state(gpu, now_s)

        return engine.with_gpu(lock)

    @app.delete("/gpus/{index}/locked-clocks")
    def reset_clocks(index: int) -> GpuState:
        check_index(index)

        def reset(gpu: SimulatedGpu, now_s: float) -> GpuState:
            gpu.reset_clock(now_s)
            return state(gpu, now_s)

        return engine.with_gpu(reset)

    return app
