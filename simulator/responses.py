"""What the twin answers: the text it streams and how many tokens it runs for.

- A prompt found in the table of recorded responses (AlpacaEval's `<model>.json`, given
  by path) gets that model's real answer, token by token with the Llama 3 tokenizer.
- Any other prompt gets a plausible length drawn from the profile's length distribution,
  seeded by the prompt (the same prompt always gets the same answer), and filler text.
- A request that ignores EOS (benchmark clients do) runs to `max_tokens`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predictor.tokenizer import PromptTokenizer

# Shorter instructions ("Hi") would match inside too many unrelated prompts.
_MIN_CONTAINED_CHARS = 16

_FILLER = (
    "Large language models answer one token at a time. Each step of the engine reads "
    "every weight of the model and the cached keys and values of every running request "
    "from memory, so a step takes about the same time whether the clock is high or a "
    "little lower. Lowering the clock saves energy, and as long as every answer still "
    "arrives on time, nobody notices the difference. "
)


@dataclass(frozen=True)
class ResponsePlan:
    pieces: tuple[str, ...]
    recorded: bool

    @property
    def output_tokens(self) -> int:
        return len(self.pieces)


class LengthDistribution:
    """Inverse CDF through (quantile, tokens) points, linear in between."""

    def __init__(self, quantiles: tuple[tuple[float, int], ...]) -> None:
        self._q = np.array([q for q, _ in quantiles], dtype=float)
        self._tokens = np.array([t for _, t in quantiles], dtype=float)

    def draw(self, uniform: float) -> int:
        return max(1, round(float(np.interp(uniform, self._q, self._tokens))))


class Responses:
    def __init__(
        self,
        tokenizer: PromptTokenizer,
        lengths: LengthDistribution,
        recorded: dict[str, str] | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._lengths = lengths
        self._recorded = recorded or {}
        self._filler = tuple(tokenizer.pieces(_FILLER))

    @staticmethod
    def load_recorded(path: Path) -> dict[str, str]:
        """instruction -> recorded output, from an AlpacaEval `model_outputs` file."""
        try:
            rows = json.loads(path.read_text())
            return {row["instruction"].strip(): row["output"] for row in rows}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"cannot read recorded responses from {path}: {error}") from error

    @property
    def recorded_count(self) -> int:
        return len(self._recorded)

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens the engine sees: the prompt's, plus the BOS token the preprocessor adds."""
        return self._tokenizer.count(prompt) + 1

    def plan(self, prompt: str, max_tokens: int, min_tokens: int = 0) -> ResponsePlan:
        """The answer to `prompt`: at least `min_tokens`, at most `max_tokens` long."""
        seed = _seed_of(prompt)
        recorded = self._lookup(prompt)
        if recorded is not None:
            pieces = self._tokenizer.pieces(recorded)
            length = min(max_tokens, max(min_tokens, len(pieces)))
            return ResponsePlan(tuple(_extend(pieces, self._filler, length, seed)), recorded=True)
        rng = np.random.default_rng(seed)
        drawn = self._lengths.draw(float(rng.random()))
        length = min(max_tokens, max(1, min_tokens, drawn))
        return ResponsePlan(tuple(_extend([], self._filler, length, seed)), recorded=False)

    def _lookup(self, prompt: str) -> str | None:
        key = prompt.strip()
        if key in self._recorded:
            return self._recorded[key]
        # A chat template wraps the instruction: take the longest one the prompt contains.
        found = [i for i in self._recorded if len(i) >= _MIN_CONTAINED_CHARS and i in key]
        return self._recorded[max(found, key=len)] if found else None


def _extend(pieces: list[str], filler: tuple[str, ...], length: int, seed: int) -> list[str]:
    """`pieces` cut or padded with filler to exactly `length` tokens."""
    if len(pieces) >= length:
        return pieces[:length]
    offset = seed % len(filler)
    return pieces + [filler[(offset + i) % len(filler)] for i in range(length - len(pieces))]


def _seed_of(prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
