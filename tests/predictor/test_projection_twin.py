"""The projection against the twin's engine: on the true lengths, the same schedule.

Random boards under both scheduler policies: the twin's engine is given the running
requests (they are scheduled in its first iteration), then the queued ones; the planner's
board is read off the engine's state (as `throttllem bench projection` reads it), and
the projection must foresee every later
iteration exactly: the batch, the KV blocks in use, the prefilled tokens, and when each
request starts and ends.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from predictor.board import SchedulerPolicy
from predictor.projection import project
from simulator.engine import Engine, EngineRequest
from simulator.profile import load_profile
from throttllem.bench.projection import true_board
from throttllem.replay.simulate import Slo

PROFILE = load_profile("a100-40gb/llama-2-13b/tp1")


@st.composite
def shapes(draw, count: int) -> list[tuple[int, int, int, int]]:
    """(prompt, generated before, true output, max_tokens) per request."""
    rows = []
    for _ in range(count):
        output = draw(st.integers(1, 150))
        rows.append((draw(st.integers(1, 300)), draw(st.integers(0, output - 1)), output,
                     output + draw(st.sampled_from([0, 0, 20, 200]))))  # fmt: skip
    return rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.sampled_from(list(SchedulerPolicy)),
    max_batch=st.integers(1, 12),
    tokens_per_block=st.sampled_from([16, 16, 64]),
    capacity_blocks=st.integers(45, 160),
    running=st.integers(0, 8).flatmap(shapes),
    queued=st.integers(0, 12).flatmap(shapes),
)
def test_the_projection_foresees_the_twins_schedule_exactly(
    policy, max_batch, tokens_per_block, capacity_blocks, running, queued
):
    profile = replace(PROFILE, max_batch_size=max_batch, tokens_per_block=tokens_per_block,
                      iteration_noise=0.0)  # fmt: skip
    engine = Engine(profile, policy=policy.value)
    engine.kv_capacity_blocks = capacity_blocks
    first = [EngineRequest(f"r{i}", p, m, o, generated_tokens=g)
             for i, (p, g, o, m) in enumerate(running)]  # fmt: skip
    for request in first:
        engine.submit(request)
    now_s = engine.step(0.0).ended_s if first else 0.0
    assume(engine.waiting == 0)  # the running ones all fit in the batch at once
    in_batch = engine.running_sequences()
    waiting = [EngineRequest(f"q{i}", p, m, o) for i, (p, _, o, m) in enumerate(queued)]
    for request in waiting:
        engine.submit(request)
    arrivals_s = {r.request_id: 0.0 for r in in_batch + waiting}
    board, ids = true_board(engine, 0.0, policy, arrivals_s, Slo(1.0, 1.0, 100.0))
    assert ids == [r.request_id for r in in_batch + waiting]
    horizon = int(board.running.remaining_tokens.sum() + board.queued.remaining_tokens.sum()) + 1
    projected = project(board, horizon)

    rows = {r.request_id: row for row, r in enumerate(in_batch + waiting)}
    start = np.zeros(len(rows), dtype=np.int64)
    end = np.zeros(len(rows), dtype=np.int64)
    batch, kv, prefill = [], [], []
    seen: set[str] = set()
    for t in range(horizon):
        step = engine.step(now_s)
        now_s = step.ended_s
        batch.append(step.batch_size)
        kv.append(step.kv_blocks)
        prefill.append(step.prefill_tokens)
        for request_id in step.emitted:
            if request_id not in seen:
                seen.add(request_id)
                start[rows[request_id]] = t if request_id.startswith("q") else 0
            end[rows[request_id]] = t + 1
    assert not engine.has_work
    assert batch == projected.batch.tolist()
    assert kv == projected.kv_blocks.tolist()
    assert prefill == projected.prefill_tokens.tolist()
    assert np.array_equal(start[len(in_batch) :], projected.start[len(in_batch) :])
    assert np.array_equal(end, projected.end)
