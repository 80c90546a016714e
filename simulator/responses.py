"""What the twin answers: the text it streams and how many tokens it runs for.

This first version streams a fixed passage, cycled from an offset chosen by the
prompt, and draws the answer's length from a log-normal seeded by the prompt, so the
same prompt always gets the same answer. Recorded model responses replace it later.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from predictor.tokenizer import PromptTokenizer

_PASSAGE = (
    "Large language models answer one token at a time. Each step of the engine reads "
    "every weight of the model and the cached keys and values of every running request "
    "from memory, so a step takes about the same time whether the clock is high or a "
    "little lower. Lowering the clock saves energy, and as long as every answer still "
    "arrives on time, nobody notices the difference. "
)


@dataclass(frozen=True)
class ResponsePlan:
    pieces: tuple[str, ...]

    @property
    def output_tokens(self) -> int:
        return len(self.pieces)


class FillerResponses:
    """Deterministic answers of a plausible length for any prompt."""

    def __init__(self, tokenizer: PromptTokenizer, median_tokens: int = 256, sigma: float = 0.8):
        self._tokenizer = tokenizer
        self._pieces = tuple(tokenizer.pieces(_PASSAGE))
        self._median_tokens = median_tokens
        self._sigma = sigma

    def plan(self, prompt: str, max_tokens: int, min_tokens: int = 0) -> ResponsePlan:
        """The answer to `prompt`: at least `min_tokens`, at most `max_tokens` long."""
        rng = np.random.default_rng(_seed_of(prompt))
        drawn = round(rng.lognormal(np.log(self._median_tokens), self._sigma))
        length = min(max_tokens, max(1, min_tokens, drawn))
        offset = int(rng.integers(len(self._pieces)))
        cycle = self._pieces
        return ResponsePlan(tuple(cycle[(offset + i) % len(cycle)] for i in range(length)))

    def prompt_tokens(self, prompt: str) -> int:
        return self._tokenizer.count(prompt)


def _seed_of(prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
