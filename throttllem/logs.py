"""One log format for every process: the CLI, the gateway's uvicorn workers, the governor.

uvicorn spawns its workers as fresh interpreters that configure logging from the
`log_config` it was given, not from the parent's setup, so the gateway's own loggers
need to be in that config, or a worker logs without time or level and drops INFO.
"""

from __future__ import annotations

import logging
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel())


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """Every logger at `level` in our format, uvicorn's master and workers included (a
    worker that dies is an INFO line of the master's); no access log: the gateway's
    metrics count requests, and a line per request would drown the rest."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper()},
            "uvicorn.access": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
        },
    }
