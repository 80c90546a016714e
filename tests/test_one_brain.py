"""One brain, two clocks: the live drivers and the replay's, fed one recorded sequence of
scoreboard states, take the same decisions.

The sequences are recorded from a seeded random walk of a busy board (arrivals, first
tokens, completions, promises tight and loose), so that the clock goes up and down, the
dwell holds lowerings back, requests wait for admission and some are lost.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, replace

import pytest

from gateway.admission import Admission
from gateway.metrics import GatewayMetrics
from governor.loop import ClockGovernor
from governor.policy import PlannerPolicy
from governor.scaler import InstanceScaler
from predictor.performance import PerformanceModel, PerformanceTable
from predictor.shipped import performance_model_path
from simulator.profile import load_profile
from slo_planner.admission import AdmissionPlanner, EngineShape
from slo_planner.admission_queue import AdmissionQueue
from slo_planner.clock_steps import ClockSteps
from slo_planner.iteration_times import TableIterationTimes
from slo_planner.scaling import EngineSize, ScalingPolicy
from slo_planner.settings import PlannerSettings
from slo_scoreboard.board import board_of, requests_of
from slo_scoreboard.scaling_channel import MemoryScalingChannel
from slo_scoreboard.store import MemoryStateStore, RequestEntry
from throttllem.replay.policies import EngineLoad, parse_policy
from throttllem.replay.scaling import EngineOption, ScaleSetup
from throttllem.replay.simulate import _Instance, _scale, _Scaler, admit_from_queue, clock_pass

PROFILE = "a100-40gb/llama-2-13b/tp1"
SUPPORTED_MHZ = list(range(210, 1411, 15))  # the A100's
WINDOW_S, DWELL_S, SWITCH_S = 0.1, 0.5, 0.2
IDLE = EngineLoad(batch=0, max_batch=16, kv_used_blocks=0, kv_capacity_blocks=4000)


@pytest.fixture(scope="module")
def model() -> TableIterationTimes:
    table = PerformanceTable.from_model(PerformanceModel(performance_model_path(PROFILE)), 128)
    return TableIterationTimes(table, prefill_s_per_token=1.7e-4, prefill_s_per_square_token=2.7e-9)


@dataclass(frozen=True)
class State:
    """The scoreboard at one instant, and whether the gateway poked the governor."""

    now_s: float
    entries: list[RequestEntry]
    poked: bool


def recorded_states(seed: int, steps: int = 120) -> list[State]:
    rng = random.Random(seed)
    now_s, entries, states, serial = 100.0, [], [], 0
    for _ in range(steps):
        now_s += rng.choice([0.03, 0.05, 0.1, 0.15, 0.25, 0.6])
        changed = False
        if rng.random() < 0.45 and len(entries) < 40:
            serial += 1
            tight = rng.random() < 0.3
            entries.append(RequestEntry(
                request_id=f"r{serial}", arrival_s=now_s, prompt_tokens=rng.randint(50, 1500),
                max_tokens=2000, predicted_tokens=rng.randint(20, 600),
                ttft_slo_s=2.0, tbt_slo_s=0.03 if tight else 0.2, e2e_deadline_s=math.inf,
            ))  # fmt: skip
            changed = True
        for index, entry in enumerate(entries):
            if entry.first_token_s is None and rng.random() < 0.5:
                entries[index] = replace(entry, first_token_s=now_s, generated_tokens=1)
            elif entry.first_token_s is not None:
                entries[index] = replace(entry, generated_tokens=entry.generated_tokens + 3)
        if entries and rng.random() < 0.25:
            entries.pop(rng.randrange(len(entries)))
            changed = True
        states.append(State(now_s, list(entries), changed))
    return states


class RecordingGpu:
    def __init__(self, now_s: list[float]) -> None:
        self.now_s = now_s
        self.locks: list[tuple[float, int]] = []

    async def supported_clocks_mhz(self) -> list[int]:
        return SUPPORTED_MHZ

    async def lock_clock(self, clock_mhz: int) -> None:
        self.locks.append((self.now_s[0], clock_mhz))

    async def reset_clock(self) -> None:
        return None

    async def clock_mhz(self) -> int:
        return self.locks[-1][1] if self.locks else max(SUPPORTED_MHZ)

    async def power_w(self) -> float:
        return 100.0

    async def energy_mj(self) -> float:
        return 0.0

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_live_governor_and_the_replays_take_the_same_clock_decisions(model, seed):
    states = recorded_states(seed)
    shape = EngineShape(max_batch=16, kv_capacity_blocks=4000, tokens_per_block=64)
    policy = parse_policy("throttllem", SUPPORTED_MHZ)

    now_s, board_entries = [0.0], [[]]

    async def read() -> list[RequestEntry]:
        return board_entries[0]

    gpu = RecordingGpu(now_s)
    live = ClockGovernor(
        [gpu], PlannerPolicy(read, model, shape, margin=policy.margin,
                             arrivals=PlannerSettings().arrival_model()), WINDOW_S,
        clock_s=lambda: now_s[0], monotonic_s=lambda: now_s[0], min_dwell_s=DWELL_S,
        switch_latency_s=SWITCH_S,
    )  # fmt: skip
    for state in states:
        now_s[0], board_entries[0] = state.now_s, state.entries
        if state.poked:
            live.poke()
        if live.due():
            await live.pass_once()

    steps = ClockSteps(WINDOW_S, DWELL_S, SWITCH_S)
    planner = policy.clock_planner(model)
    replayed: list[tuple[float, int]] = []
    for state in states:
        if state.poked:
            steps.poke()

        def target_mhz(planning_s: float, entries: list[RequestEntry] = state.entries) -> int:
            board = board_of(entries, planning_s, shape)
            return policy.clock_mhz(SUPPORTED_MHZ, IDLE, board, planner, model)

        clock_pass(steps, target_mhz, lambda mhz, at_s: replayed.append((at_s, mhz)), state.now_s)

    assert gpu.locks == replayed
    assert live.status.decisions == steps.counts.decisions
    assert live.status.held_changes == steps.counts.held_changes > 0  # the dwell held some back
    assert len({mhz for _, mhz in replayed}) > 3  # the clock moved, both ways


Event = tuple[float, str, "RequestEntry | str"]


def arrivals_and_departures(seed: int, count: int = 60) -> list[Event]:
    """Events at the gateway, at their times: a request arrives (some sent so late that
    their first token is due already: lost), or one on the board leaves (its answer ended)."""
    rng = random.Random(seed)
    events: list[Event] = []
    on_board: list[str] = []
    for serial in range(count):
        now_s = 50.0 + serial * 0.05
        if on_board and rng.random() < 0.6:
            events.append((now_s, "leave", on_board.pop(0)))
        late = rng.random() < 0.1
        events.append((now_s, "arrive", RequestEntry(
            request_id=f"q{serial}", arrival_s=now_s - (30.0 if late else 0.0),
            prompt_tokens=rng.randint(100, 2000), max_tokens=1500,
            predicted_tokens=rng.randint(20, 200), ttft_slo_s=10.0, tbt_slo_s=0.04,
        )))  # fmt: skip
        on_board.append(f"q{serial}")
    return events


@pytest.mark.parametrize("seed", [4, 5])
async def test_the_gateways_admission_and_the_replays_admit_the_same_requests(model, seed):
    shape = EngineShape(max_batch=16, kv_capacity_blocks=300, tokens_per_block=64)
    planner = AdmissionPlanner(model, shape)
    events = arrivals_and_departures(seed)
    now_s = [0.0]

    store = MemoryStateStore()
    live = Admission(store, planner, GatewayMetrics(), max_queue=1000, retry_after_s=1,
                     window_s=60.0, refresh_every_s=60.0, wall_clock_s=lambda: now_s[0])  # fmt: skip
    live_admitted: list[str] = []
    waiting: list[asyncio.Task[object]] = []
    for now_s[0], kind, what in events:
        if kind == "arrive":
            assert isinstance(what, RequestEntry)
            task = asyncio.create_task(live.enter(what))
            task.add_done_callback(lambda _, rid=what.request_id: live_admitted.append(rid))
            waiting.append(task)
            for _ in range(5):  # it tries at once, or queues and wakes the admission task
                await asyncio.sleep(0)
        else:
            await live.release(str(what))
        await live.admit_waiting()  # what the woken admission task does
        for _ in range(5):
            await asyncio.sleep(0)

    board: list[RequestEntry] = []
    queue: AdmissionQueue[RequestEntry] = AdmissionQueue(planner, lambda e: requests_of([e]))
    replayed: list[str] = []
    waits = 0

    def send(entry: RequestEntry) -> object:
        board.append(entry)
        replayed.append(entry.request_id)
        return requests_of([entry])

    for at_s, kind, what in events:
        if kind == "arrive":
            assert isinstance(what, RequestEntry)
            queue.enqueue(what, what.arrival_s + what.ttft_slo_s)
        else:
            board[:] = [entry for entry in board if entry.request_id != what]
        admit_from_queue(queue, board_of(board, at_s, shape), send)  # type: ignore[arg-type]
        waits += queue.waiting

    assert live_admitted == replayed
    assert waits > 0  # requests did wait for room
    arrived = [what for _, kind, what in events if kind == "arrive"]
    late = [e.request_id for e in arrived if isinstance(e, RequestEntry) and e.arrival_s < 40]
    assert late and set(late) <= set(replayed)  # lost ones go at once
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


class InstantRepository:
    """Triton's repository API, loading at once."""

    def __init__(self, loaded: set[str]) -> None:
        self.loaded = loaded

    async def ready(self, model: str) -> bool:
        return model in self.loaded

    async def load(self, model: str) -> None:
        self.loaded.add(model)

    async def unload(self, model: str) -> None:
        self.loaded.discard(model)

    async def aclose(self) -> None:
        return None


async def test_the_live_scaler_and_the_replays_move_at_the_same_rounds():
    rates_rps = [0.5, 0.5, 3.0, 3.5, 3.0, 0.4, 0.4, 0.3, 0.2, 0.3, 0.4, 0.2, 0.1, 0.2, 2.5, 0.3]
    interval_s, grace_s, drain_s = 10.0, 25.0, 0.0  # unloads at once: no real waits
    sizes = [EngineSize("tp1", "ensemble-tp1", 2.0), EngineSize("tp2", "ensemble-tp2", 4.0)]
    profiles = {"tp1": load_profile(PROFILE), "tp2": load_profile("a100-40gb/llama-2-13b/tp2")}
    options = tuple(EngineOption(size, profiles[size.label].name, profiles[size.label], None)
                    for size in sizes)  # type: ignore[arg-type]  # fmt: skip
    setup = ScaleSetup(options, load_s=0.0, interval_s=interval_s, grace_s=grace_s,
                       drain_s=drain_s, headroom=1.0)  # fmt: skip

    clock_s, channel = [0.0], MemoryScalingChannel()
    live = InstanceScaler(ScalingPolicy(sizes, 1.0, grace_s), channel,
                          InstantRepository({"ensemble-tp1"}), interval_s=interval_s,  # type: ignore[arg-type]
                          drain_s=drain_s, clock=lambda: clock_s[0])  # fmt: skip
    await live.start("ensemble-tp1")
    live_moves = []
    for round_index, rate_rps in enumerate(rates_rps, start=1):
        await channel.add_arrivals(round(rate_rps * interval_s))
        clock_s[0] = round_index * interval_s
        before = live.current
        await live.step()
        await live.drained()
        if live.current != before:
            live_moves.append((clock_s[0], live.current.label))

    policy = parse_policy("max", SUPPORTED_MHZ)
    scaler = _Scaler(setup, "tp1")
    routed = _Instance("tp1", profiles["tp1"], None, policy, 0, loaded_s=0.0, ready_s=0.0)
    instances, arrivals, replayed = [routed], 0, []
    for round_index, rate_rps in enumerate(rates_rps, start=1):
        arrivals += round(rate_rps * interval_s)
        at_s = round_index * interval_s
        for _ in range(2):  # the round, then (a load takes no time here) the move
            moved = _scale(scaler, instances, routed, policy, 0, arrivals, at_s)
            if moved is not routed:
                routed = moved
                replayed.append((at_s, routed.label))
        for instance in instances:  # what the replay's loop does once a drained engine is idle
            if instance.release_after_s is not None and at_s >= instance.release_after_s:
                instance.release(at_s)
                scaler.steps.unloaded(scaler.size(instance))

    assert live_moves == replayed
    assert [label for _, label in replayed] == ["tp2", "tp1", "tp2"]
