"""One policy over one workload, on the twin's engines in virtual time.

The loop drives the live system's own cores around the engines, in the order events
happen; only the I/O differs:

- a request reaches the gateway at its trace time. Ungated policies send it straight to
  the engine; gated ones queue it in the gateway's admission queue
  (`slo_planner.admission_queue`), whose head is tried whenever the board changes;
- each engine steps one iteration at a time; tokens are stamped when their iteration
  ends;
- at an iteration's end (every window while idle) the governor's pass
  (`slo_planner.clock_steps`) runs for that engine when it is due: a window after the
  previous pass, or at once, for the gated policies, when a request joined or left (the
  gateway pokes the live governor so). A lower clock waits out the minimum dwell; the
  GPUs take the switch latency to apply a clock (the twin models that, and an iteration
  under way changes speed from the instant the switch lands);
- with scaling, every interval the scaling rounds (`slo_planner.scaling.ScalingSteps`)
  compare the arrival rate with each size's capacity; a new engine loads in the shadow
  (its GPUs draw idle power while it loads, and no round runs meanwhile, as the live
  scaler waits for its load), the route moves once it is ready, and the old engine's
  GPUs are handed back once the drain period has passed and its requests are done.

The planner sees each request's tokens still to come by the gateway's rule
(`slo_planner.remaining`), capped by its `max_tokens`, which the replay's client sets to
the answer's true length (a benchmark client with `ignore_eos` does so, and the live
replay sends the same): the engine's reservation is then what the board says. The
window, dwell and margin are the settings' defaults.
Energy is the twin's integral of power over every GPU while it holds an engine, idle
included. Each request's share of it is billed iteration by iteration by the live
gateway's rule (slo_planner/energy_split.py), with the planner's prefill weight.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from governor.settings import GovernorSettings
from predictor.board import Board, Requests, SchedulerPolicy
from simulator.engine import Engine, EngineRequest, StepResult
from simulator.profile import EngineProfile
from slo_planner.admission import AdmissionPlanner, EngineShape
from slo_planner.admission_queue import AdmissionQueue
from slo_planner.clock_steps import ClockSteps
from slo_planner.energy_split import price_window
from slo_planner.feasibility import IterationTimes
from slo_planner.iteration_times import TableIterationTimes, prefill_weight
from slo_planner.remaining import remaining_tokens
from slo_planner.scaling import EngineSize, ScalingPolicy, ScalingSteps
from slo_planner.settings import PlannerSettings
from throttllem.replay.policies import EngineLoad, Policy
from throttllem.replay.scaling import ScaleSetup
from throttllem.replay.workload import Workload

_GOVERNOR = GovernorSettings()  # the defaults a deployment runs with
WINDOW_S = _GOVERNOR.governor_window_ms / 1000  # the governor's decision window
MIN_DWELL_S = _GOVERNOR.governor_min_dwell_ms / 1000  # least time between two lowerings
_PLANNER = PlannerSettings()


@dataclass(frozen=True)
class Slo:
    """The promises every request of a replay gets. `e2e_s` is one fixed deadline (the
    paper's regime); where it is infinite, a request's end-to-end budget is what its TTFT
    and TPOT imply, `ttft_s + tokens x tbt_s`, and the planner sees no separate deadline
    (as a gateway given only `x-slo-ttft-ms` and `x-slo-tpot-ms` plans)."""

    ttft_s: float
    tbt_s: float  # mean time between tokens (TPOT)
    e2e_s: float = math.inf

    def e2e_budget_s(self, tokens: np.ndarray) -> np.ndarray:
        if math.isfinite(self.e2e_s):
            return np.full(len(tokens), self.e2e_s)
        return self.ttft_s + tokens * self.tbt_s


@dataclass
class Run:
    policy: str
    energy_j: float
    ttft_s: np.ndarray
    tbt_s: np.ndarray
    e2e_s: np.ndarray
    met: np.ndarray
    output_tokens: int
    mean_freq_mhz: float
    wall_s: float
    series_t_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    series_clock_mhz: np.ndarray = field(default_factory=lambda: np.zeros(0))  # routed engine
    series_power_w: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every GPU held
    series_gpus: np.ndarray = field(default_factory=lambda: np.zeros(0))  # GPUs held
    queue_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # waited at the gateway
    engine_wait_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # in the engine
    prefill_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # its first iteration
    energy_active_j: np.ndarray = field(default_factory=lambda: np.zeros(0))  # billed, per request
    energy_idle_j: np.ndarray = field(default_factory=lambda: np.zeros(0))
    moves: list[tuple[float, str]] = field(default_factory=list)  # (when, to which size)

    @property
    def mean_gpus(self) -> float:
        return _time_weighted_mean(self.series_t_s, self.series_gpus)


class _Requests:
    """Every request's progress, shared by the engines that serve them."""

    def __init__(self, workload: Workload, believed: np.ndarray, slo: Slo,
                 quantiles: np.ndarray | None) -> None:  # fmt: skip
        n = len(workload)
        self.arrival_s, self.prompts = workload.arrival_s, workload.prompt_tokens
        self.outputs = workload.output_tokens
        self.believed, self.slo, self.quantiles = believed, slo, quantiles
        # The bound the gateway sees and sends: the replay's client asks for the answer's
        # own length (as a benchmark client with `ignore_eos` does), and the engine
        # reserves the prompt plus that under guaranteed_no_evict.
        self.max_tokens = self.outputs.astype(np.int64)
        self.generated = np.zeros(n, dtype=np.int64)
        self.first_s = np.full(n, math.nan)
        self.last_s = np.full(n, math.nan)
        self.finished_s = np.full(n, math.nan)
        self.admitted_s = np.full(n, math.nan)  # when it entered an engine
        self.energy_active_j = np.zeros(n)  # its share above idle, billed per iteration
        self.energy_idle_j = np.zeros(n)  # its share of idle, by the time an engine held it
        self.prefill_start_s = np.full(n, math.nan)  # when its first iteration began
        # Each request's own promises are planned on a calibrated quantile of its rest,
        # as the live governor does; the replay calibrates on each answer's true length.
        self.length_risk = _PLANNER.length_risk() if quantiles is not None else None

    def rows(self, indices: np.ndarray) -> Requests:
        return self._rows(indices, *self._remaining(indices))

    def split_rows(self, first: np.ndarray, then: np.ndarray) -> tuple[Requests, Requests]:
        """`rows` of two groups, their predictions computed in one pass."""
        remaining, at_risk = self._remaining(np.concatenate([first, then]))
        cut = len(first)
        return (self._rows(first, remaining[:cut], at_risk[:cut]),
                self._rows(then, remaining[cut:], at_risk[cut:]))  # fmt: skip

    def _remaining(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The gateway's rule, on the quantiles of the length prediction (or, for the
        oracle, the true lengths as the point prediction): the expected rest, and the
        rest at the planning level its own promises are judged on."""
        quantiles = None if self.quantiles is None else self.quantiles[indices]
        arguments = (self.max_tokens[indices], self.generated[indices], self.believed[indices],
                     quantiles)  # fmt: skip
        expected = remaining_tokens(*arguments)
        if self.length_risk is None:
            return expected, expected
        return expected, remaining_tokens(*arguments, self.length_risk.level)

    def finished(self, index: int, now_s: float) -> None:
        self.finished_s[index] = now_s
        if self.length_risk is not None and self.quantiles is not None:
            self.length_risk.observe(self.quantiles[index].tolist(), int(self.outputs[index]))

    def _rows(self, indices: np.ndarray, remaining: np.ndarray,
              at_risk: np.ndarray) -> Requests:  # fmt: skip
        count, slo = len(indices), self.slo
        return Requests(
            arrival_s=self.arrival_s[indices].astype(np.float64),
            prompt_tokens=self.prompts[indices].astype(np.int64),
            generated_tokens=self.generated[indices].copy(),
            remaining_tokens=remaining,
            ttft_slo_s=np.full(count, slo.ttft_s),
            tbt_slo_s=np.full(count, slo.tbt_s),
            e2e_deadline_s=self.arrival_s[indices] + slo.e2e_s,  # inf: none of its own
            max_tokens=self.max_tokens[indices],
            remaining_at_risk_tokens=at_risk,
        )


class _Instance:
    """One engine with its GPUs, its governor's state, and (gated) its admission planner."""

    def __init__(self, label: str, profile: EngineProfile, model: IterationTimes | None,
                 policy: Policy, seed: int, loaded_s: float, ready_s: float) -> None:  # fmt: skip
        self.label, self.profile, self.model, self.policy = label, profile, model, policy
        self.engine = Engine(profile, seed=seed, started_s=loaded_s)
        if policy.power_cap_w is not None:
            for gpu in self.engine.gpus:
                gpu.set_power_limit(policy.power_cap_w)
        self.ready_s = ready_s
        self.active: dict[int, None] = {}  # admitted, unfinished, in admission order
        self.step: StepResult | None = None  # the iteration under way
        self.prefill_weight = (
            prefill_weight(model) if isinstance(model, TableIterationTimes) else 0.0
        )
        self._idle_power_w = profile.gpu.idle_power_w * profile.tensor_parallel
        self._billed_s, self._billed_mj = loaded_s, self._energy_mj()
        # Running sums of the prices every iteration so far charged: a request running
        # from iteration a to b pays the difference, so billing is O(1) per iteration.
        self._unit_sum = self._held_sum = 0.0
        self._unit_mark: dict[int, float] = {}  # running requests: the sum when they started
        self._held_mark: dict[int, float] = {}  # held requests: the sum when they joined
        self.steps = ClockSteps(WINDOW_S, MIN_DWELL_S, profile.gpu.clock_switch_latency_s)
        self.release_after_s: float | None = None  # draining: hand back once empty after
        self.released = False
        self.clock_planner = policy.clock_planner(model)
        self.admission_planner = None
        if policy.gated and model is not None:
            shape = EngineShape(profile.max_batch_size, self.engine.kv_capacity_blocks,
                                profile.tokens_per_block,
                                SchedulerPolicy(self.engine.policy))  # fmt: skip
            self.admission_planner = AdmissionPlanner(model, shape, retry_s=WINDOW_S)

    def board(self, requests: _Requests, now_s: float) -> Board:
        indices = np.fromiter(self.active, dtype=np.int64, count=len(self.active))
        running = ~np.isnan(requests.first_s[indices])
        queued = indices[~running]
        queued = queued[np.argsort(requests.arrival_s[queued], kind="stable")]
        return Board(now_s, *requests.split_rows(indices[running], queued),
                     self.profile.max_batch_size, self.engine.kv_capacity_blocks,
                     self.profile.tokens_per_block,
                     SchedulerPolicy(self.engine.policy))  # fmt: skip

    def submit(self, index: int, requests: _Requests, now_s: float) -> None:
        self.engine.submit(EngineRequest(str(index), int(requests.prompts[index]),
                                         int(requests.max_tokens[index]),
                                         int(requests.outputs[index])))  # fmt: skip
        self.active[index] = None
        self._held_mark[index] = self._held_sum
        requests.admitted_s[index] = now_s
        self.board_changed()

    def board_changed(self) -> None:
        """A request joined or left: the gated policies' gateway pokes the governor."""
        if self.policy.gated:
            self.steps.poke()

    def decide(self, requests: _Requests, now_s: float) -> None:
        """The governor's pass for this engine, if one is due."""
        profile, engine = self.profile, self.engine
        load = EngineLoad(engine.running, profile.max_batch_size, engine.kv_used_blocks,
                          engine.kv_capacity_blocks, engine.waiting)  # fmt: skip
        clocks_mhz = profile.gpu.supported_clocks_mhz()

        def target_mhz(planning_s: float) -> int:
            planned = self.board(requests, planning_s) if self.policy.gated else None
            return self.policy.clock_mhz(clocks_mhz, load, planned, self.clock_planner,
                                         self.model, requests.slo.tbt_s)  # fmt: skip

        def lock(clock_mhz: int, at_s: float) -> None:
            for gpu in engine.gpus:
                gpu.lock_clock(clock_mhz, at_s)

        clock_pass(self.steps, target_mhz, lock, now_s)

    def start_step(self, now_s: float) -> None:
        self.step = self.engine.step(now_s)

    def _energy_mj(self) -> float:
        return sum(gpu.energy_mj() for gpu in self.engine.gpus)

    def bill(self, result: StepResult, requests: _Requests) -> None:
        """The iteration's energy (and the idle gap before it) split among the requests
        the engine held, by the rule the live gateway bills by: one unit per emitted
        token, the prefilled tokens at the prefill weight, idle by the time held."""
        energy_mj = self._energy_mj()
        duration_s = result.ended_s - self._billed_s
        energy_j = (energy_mj - self._billed_mj) / 1000
        self._billed_s, self._billed_mj = result.ended_s, energy_mj
        active, emitted = requests.energy_active_j, result.emitted
        for request_id in result.paused:  # out of the batch before this iteration
            index = int(request_id)
            active[index] += self._unit_sum - self._unit_mark.pop(index)
        if not self.active or duration_s <= 0:
            return
        weight = self.prefill_weight
        units = len(emitted) + weight * sum(result.prefilled_tokens)
        prices = price_window(energy_j, duration_s, self._idle_power_w, units,
                              len(self.active) * duration_s, end_s=result.ended_s,
                              prefill_weight=weight)  # fmt: skip
        per_unit = prices.active_j_per_unit
        started = emitted[len(emitted) - result.prefill_requests :]
        for request_id, tokens in zip(started, result.prefilled_tokens, strict=True):
            index = int(request_id)
            self._unit_mark[index] = self._unit_sum
            active[index] += per_unit * weight * tokens
        self._unit_sum += per_unit
        self._held_sum += prices.idle_j_per_held_s * duration_s
        for request_id in result.finished:
            index = int(request_id)
            active[index] += self._unit_sum - self._unit_mark.pop(index)
            requests.energy_idle_j[index] += self._held_sum - self._held_mark.pop(index)

    def finish_step(self, requests: _Requests) -> bool:
        """Stamp the iteration's tokens; whether the board changed."""
        assert self.step is not None
        result, self.step = self.step, None
        self.bill(result, requests)
        now_s, changed = result.ended_s, False
        for request_id in result.emitted:
            index = int(request_id)
            requests.generated[index] += 1
            if math.isnan(requests.first_s[index]):
                requests.first_s[index] = now_s
                requests.prefill_start_s[index] = result.started_s
                changed = True
            requests.last_s[index] = now_s
        for request_id in result.finished:
            index = int(request_id)
            requests.finished(index, now_s)
            del self.active[index]
            changed = True
        if changed:
            self.board_changed()
        return changed

    def power_w(self) -> float:
        return 0.0 if self.released else sum(gpu.power_w() for gpu in self.engine.gpus)

    def release(self, now_s: float) -> None:
        for gpu in self.engine.gpus:
            gpu.idle_until(now_s)
        self.released = True


def clock_pass(
    steps: ClockSteps,
    target_mhz: Callable[[float], int],
    lock: Callable[[int, float], None],
    now_s: float,
) -> None:
    """The governor's pass as the replay drives it (governor/loop.py drives the same
    steps on the wall clock): if one is due, the policy's clock for the planning time,
    locked if the dwell lets it through."""
    if not steps.due(now_s):
        return
    apply_mhz = steps.decide(target_mhz(steps.planning_time_s(now_s)), now_s)
    if apply_mhz is not None:
        lock(apply_mhz, now_s)
        steps.applied(apply_mhz, now_s)


def admit_from_queue(
    queue: AdmissionQueue[int], board: Board, send: Callable[[int], Requests]
) -> None:
    """The gateway's admission as the replay drives it (gateway/admission.py drives the
    same queue against the scoreboard): the head goes while the planner lets it, each
    sent one joining the board as queued. `send` submits one and gives its row."""
    while queue.next_to_admit(board) is not None:
        index = queue.pop_head()  # admitted, or lost: never dropped
        board = board.with_queued(send(index))


class _Scaler:
    """The live scaler's rounds in virtual time: measure, pick, load in the shadow, move."""

    def __init__(self, setup: ScaleSetup, start_label: str) -> None:
        self.setup = setup
        sizes = [option.size for option in setup.options]
        policy = ScalingPolicy(sizes, setup.headroom, setup.grace_s)
        self.steps = ScalingSteps(policy, setup.option(start_label).size, setup.drain_s)
        self.steps.count(0, 0.0)  # the scaler starts with the replay
        self.next_round_s = setup.interval_s
        self.loading: _Instance | None = None

    def size(self, instance: _Instance) -> EngineSize:
        return self.setup.option(instance.label).size


def simulate(
    workload: Workload,
    profile: EngineProfile,
    policy: Policy,
    slo: Slo,
    model: IterationTimes | None,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
    scaling: ScaleSetup | None = None,
) -> Run:
    started_wall_s = time.perf_counter()
    if (policy.gated or policy.slo_feedback) and model is None:
        raise ValueError(f"policy {policy.name} needs the engine's performance model")
    if policy.needs_sizes and scaling is None:
        raise ValueError(f"policy {policy.name} needs the engine's sizes")
    n = len(workload)
    believed = workload.output_tokens if policy.true_lengths else workload.predicted_tokens
    quantiles = None if policy.true_lengths else workload.length_quantiles
    requests = _Requests(workload, believed, slo, quantiles)
    arrival = workload.arrival_s
    scaler = None
    label = profile.name
    if policy.scaling and scaling is not None:
        label = next(o.size.label for o in scaling.options if o.profile_name == profile.name)
        scaler = _Scaler(scaling, label)
    if policy.largest_size and scaling is not None:
        largest = scaling.options[-1]  # ascending capacity
        label, profile, model = largest.size.label, largest.profile, largest.model
    routed = _Instance(label, profile, model, policy, seed, loaded_s=0.0, ready_s=0.0)
    instances = [routed]
    # The gateway's admission queue (gated policies), unbounded: a refused request would
    # make the policies' work differ.
    queue: AdmissionQueue[int] = AdmissionQueue(
        routed.admission_planner, lambda index: requests.rows(np.array([index]))
    )
    series: list[tuple[float, int, float, int]] = []
    moves: list[tuple[float, str]] = []
    next_sample_s = 0.0
    next_arrival = 0
    reported = 0
    now_s = 0.0
    board_changed = False

    def send(index: int) -> Requests:
        routed.submit(index, requests, now_s)
        return requests.rows(np.array([index]))

    while True:
        for instance in instances:  # iterations that have ended
            if instance.step is not None and instance.step.ended_s <= now_s:
                board_changed |= instance.finish_step(requests) and instance is routed
        while next_arrival < n and arrival[next_arrival] <= now_s:
            if policy.gated:
                queue.enqueue(next_arrival, arrival[next_arrival] + slo.ttft_s)
                board_changed = True
            else:
                routed.submit(next_arrival, requests, now_s)
            next_arrival += 1
        if scaler is not None:
            moved = _scale(scaler, instances, routed, policy, seed, next_arrival, now_s)
            if moved is not routed:
                routed, board_changed = moved, True
                queue.planner = routed.admission_planner
                moves.append((now_s, routed.label))
        if not queue.empty and board_changed:
            admit_from_queue(queue, routed.board(requests, now_s), send)
        board_changed = False
        live = [instance for instance in instances if not instance.released]
        for instance in live:
            if now_s < instance.ready_s:
                continue
            # The governor's passes run on the wall clock, also while an iteration runs.
            instance.decide(requests, now_s)
            if instance.step is not None:
                continue
            if instance.engine.has_work:
                instance.start_step(now_s)
            elif instance.release_after_s is not None and now_s >= instance.release_after_s:
                instance.release(now_s)
                if scaler is not None:
                    scaler.steps.unloaded(scaler.size(instance))
        live = [instance for instance in live if not instance.released]
        if now_s >= next_sample_s:
            held = sum(instance.profile.tensor_parallel for instance in live)
            power_w = sum(instance.power_w() for instance in live)
            step = routed.step  # under a power cap, the clock the iteration really runs at
            clock_mhz = step.clock_mhz if step is not None else routed.engine.clock_mhz(now_s)
            series.append((now_s, clock_mhz, power_w, held))
            next_sample_s = now_s + WINDOW_S
        busy = [instance.step.ended_s for instance in live if instance.step is not None]
        if next_arrival >= n and queue.empty and not busy:
            break  # nothing under way, nothing to come: every engine is empty
        upcoming = [next_sample_s, *busy]
        if next_arrival < n:
            upcoming.append(arrival[next_arrival])
        idle = [i for i in live if i.step is None and i.ready_s <= now_s]
        upcoming += [i.steps.next_pass_s for i in live if i.ready_s <= now_s]
        upcoming += [i.ready_s for i in live if i.ready_s > now_s]
        upcoming += [i.release_after_s for i in idle if i.release_after_s is not None]
        if scaler is not None and scaler.loading is None:  # a load ends in its ready_s
            upcoming.append(scaler.next_round_s)
        now_s = max(now_s, min(upcoming))
        if progress is not None and next_arrival * 100 // max(n, 1) > reported:
            reported = next_arrival * 100 // max(n, 1)
            progress(next_arrival / n)
    for instance in instances:
        if not instance.released:
            instance.release(now_s)
    energy_j = sum(gpu.energy_mj() for i in instances for gpu in i.engine.gpus) / 1000
    return _run(policy, workload, slo, requests, energy_j, series, moves,
                time.perf_counter() - started_wall_s)  # fmt: skip


def _scale(scaler: _Scaler, instances: list[_Instance], routed: _Instance, policy: Policy,
           seed: int, arrivals: int, now_s: float) -> _Instance:  # fmt: skip
    """The scaler's round, if due; the engine new requests go to after it."""
    loading = scaler.loading
    setup = scaler.setup
    if loading is not None:  # the live scaler waits for its load: no round meanwhile
        if now_s < loading.ready_s:
            return routed
        scaler.loading = None
        scaler.next_round_s = now_s + setup.interval_s
        return _move(scaler, routed, loading, now_s)
    if now_s < scaler.next_round_s:
        return routed
    scaler.next_round_s = now_s + setup.interval_s
    target = scaler.steps.round(arrivals, now_s)
    if target is None:
        return routed
    if scaler.steps.still_loaded(target):  # still draining: take it back without a load
        kept = next(i for i in instances if i.label == target.label and not i.released)
        return _move(scaler, routed, kept, now_s)
    option = setup.option(target.label)
    scaler.loading = _Instance(target.label, option.profile, option.model, policy, seed,
                               loaded_s=now_s, ready_s=now_s + setup.load_s)  # fmt: skip
    instances.append(scaler.loading)
    return routed


def _move(scaler: _Scaler, old: _Instance, new: _Instance, now_s: float) -> _Instance:
    _, unload_at_s = scaler.steps.moved(scaler.size(new), now_s)
    old.release_after_s = unload_at_s
    new.release_after_s = None
    return new


def _run(
    policy: Policy,
    workload: Workload,
    slo: Slo,
    requests: _Requests,
    energy_j: float,
    series: list[tuple[float, int, float, int]],
    moves: list[tuple[float, str]],
    wall_s: float,
) -> Run:
    generated = requests.generated
    ttft_s, tbt_s, e2e_s, met = request_latencies(workload.arrival_s, requests.first_s,
                                                  requests.last_s, requests.finished_s,
                                                  generated, slo)  # fmt: skip
    t_s, clock_mhz, power_w, gpus = (np.array(column) for column in zip(*series, strict=True))
    return Run(
        policy=policy.name,
        energy_j=energy_j,
        ttft_s=ttft_s,
        tbt_s=tbt_s,
        e2e_s=e2e_s,
        met=met,
        output_tokens=int(generated.sum()),
        mean_freq_mhz=_time_weighted_mean(t_s, clock_mhz),
        wall_s=wall_s,
        series_t_s=t_s,
        series_clock_mhz=clock_mhz,
        series_power_w=power_w,
        series_gpus=gpus,
        queue_s=requests.admitted_s - workload.arrival_s,
        engine_wait_s=requests.prefill_start_s - requests.admitted_s,
        prefill_s=requests.first_s - requests.prefill_start_s,
        energy_active_j=requests.energy_active_j,
        energy_idle_j=requests.energy_idle_j,
        moves=moves,
    )


def request_latencies(
    arrival_s: np.ndarray,
    first_s: np.ndarray,
    last_s: np.ndarray,
    finished_s: np.ndarray,
    tokens: np.ndarray,
    slo: Slo,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TTFT, TBT (the mean gap over the answer), E2E, and whether all three were met
    (a request never finished, NaN, met none)."""
    ttft_s = first_s - arrival_s
    tbt_s = np.where(tokens > 1, (last_s - first_s) / np.maximum(tokens - 1, 1), 0.0)
    e2e_s = finished_s - arrival_s
    with np.errstate(invalid="ignore"):
        met = (ttft_s <= slo.ttft_s) & (tbt_s <= slo.tbt_s) & (e2e_s <= slo.e2e_budget_s(tokens))
    return ttft_s, tbt_s, e2e_s, met


def _time_weighted_mean(t_s: np.ndarray, values: np.ndarray) -> float:
    """Each sample holds until the next (samples fall at iteration ends, not evenly)."""
    if len(values) < 2:
        return float(values.mean()) if len(values) else math.nan
    return float(np.average(values[:-1], weights=np.diff(t_s)))
