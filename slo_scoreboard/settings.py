"""The scoreboard's settings: where it lives, and how long an entry outlives its worker
(part of `THROTTLLEM_*`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ScoreboardSettings(BaseModel):
    redis_url: str | None = Field(
        None,
        description="Redis for the scoreboard shared by workers and the governor "
        "(`redis://host:6379/0`); none: in memory, one worker.",
    )
    instance: str = Field(
        "default",
        description="The engine instance this gateway feeds; its scoreboard's key in Redis.",
    )
    state_entry_ttl_s: float = Field(
        10.0,
        gt=0,
        description="A request's scoreboard entry expires this long after its worker last "
        "refreshed it (a dead worker leaves nothing behind).",
    )
