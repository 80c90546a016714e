"""The projection against the twin's engine: on the true lengths, the same schedule.

Random boards under both scheduler policies: the twin's engine is given the running
requests (they are scheduled in its first iteration), then the queued ones; the planner's
board is read off the engine's state, and the projection must foresee every later
iteration exactly: the batch, the KV blocks in use, the prefilled tokens, and when each
request starts and ends.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from predictor.board import Board, Requests, SchedulerPolicy
from predictor.projection import project
from simulator.engine import Engine, EngineRequest
from simulator.profile import load_profile

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


def board_of(engine: Engine, running: list[EngineRequest], queued: list[EngineRequest],
             policy: SchedulerPolicy) -> Board:  # fmt: skip
    def rows(requests: list[EngineRequest], generated: list[int]) -> Requests:
        return Requests.of(
            arrival_s=[0.0] * len(requests),
            prompt_tokens=[r.prompt_tokens for r in requests],
            generated_tokens=generated,
            remaining_tokens=[r.output_tokens - g for r, g in zip(requests, generated, strict=True)],
            ttft_slo_s=[1.0] * len(requests),
            tbt_slo_s=[1.0] * len(requests),
            e2e_deadline_s=[100.0] * len(requests),
            max_tokens=[r.max_tokens for r in requests],
        )  # fmt: skip

    done = engine.iterations
    return Board(
        now_s=0.0,
        running=rows(running, [r.generated_after(done) for r in running]),
        queued=rows(queued, [r.generated_tokens for r in queued]),
        max_batch=engine.profile.max_batch_size,
        kv_capacity_blocks=engine.kv_capacity_blocks,
        tokens_per_block=engine.profile.tokens_per_block,
        scheduler_policy=policy,
    )


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
    board = board_of(engine, in_batch, waiting, policy)
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
