"""Per-request promises, from headers or the settings' defaults.

`x-slo-ttft-ms` and `x-slo-tpot-ms` are the names the Kubernetes Gateway API Inference
Extension uses; `x-slo-e2e-ms` adds an end-to-end deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import InvalidRequestError
from gateway.settings import GatewaySettings

TTFT_HEADER, TPOT_HEADER, E2E_HEADER = "x-slo-ttft-ms", "x-slo-tpot-ms", "x-slo-e2e-ms"


@dataclass(frozen=True)
class RequestSlo:
    ttft_s: float
    tpot_s: float
    e2e_s: float  # inf: no deadline

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], settings: GatewaySettings) -> RequestSlo:
        e2e_default_ms = settings.slo_e2e_ms if settings.slo_e2e_ms is not None else math.inf
        return cls(
            ttft_s=_milliseconds(headers, TTFT_HEADER, settings.slo_ttft_ms) / 1000,
            tpot_s=_milliseconds(headers, TPOT_HEADER, settings.slo_tpot_ms) / 1000,
            e2e_s=_milliseconds(headers, E2E_HEADER, e2e_default_ms) / 1000,
        )


def _milliseconds(headers: Mapping[str, str], name: str, default_ms: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default_ms
    try:
        value_ms = float(raw)
    except ValueError:
        value_ms = math.nan
    if not math.isfinite(value_ms) or value_ms <= 0:
        raise InvalidRequestError(
            f"header {name} must be a positive number of milliseconds, not {raw[:40]!r}",
            param=name,
            code="invalid_slo",
        )
    return value_ms
