import json

import pytest

from gateway.backends.base import GenerationChunk, arrived_together
from gateway.errors import BackendError


def parse(data: str) -> GenerationChunk | None:
    event = json.loads(data)
    if "error" in event:
        raise BackendError(event["error"])
    if not event:
        return None
    return GenerationChunk(event["text"], event.get("tokens"), event.get("prompt"))


def events(*items: dict[str, object]) -> list[str]:
    return [json.dumps(item) for item in items]


def test_counted_chunks_that_arrived_together_become_one():
    batch = events({"text": "a", "tokens": 1, "prompt": 4}, {}, {"text": "bc", "tokens": 2})
    assert list(arrived_together(batch, parse)) == [GenerationChunk("abc", 3, 4)]


def test_chunks_without_their_own_count_stay_apart():
    # The gateway counts an uncounted chunk as one token: merging would lose tokens.
    batch = events({"text": "a", "tokens": 1}, {"text": "b"})
    assert list(arrived_together(batch, parse)) == [
        GenerationChunk("a", 1, None),
        GenerationChunk("b", None, None),
    ]


def test_an_error_event_comes_after_what_preceded_it():
    batch = events({"text": "a", "tokens": 1}, {"error": "engine died"}, {"text": "b", "tokens": 1})
    seen = []
    with pytest.raises(BackendError, match="engine died"):
        for chunk in arrived_together(batch, parse):
            seen.append(chunk)
    assert seen == [GenerationChunk("a", 1, None)]
