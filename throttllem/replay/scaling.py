"""`throttllem+scale`: the engine sizes a replay may move between, and their capacities.

The sizes are the routed profile's siblings (the same GPU and model at other tensor-
parallel degrees, `a100-40gb/llama-2-13b/tp1|tp2|tp4`) that have a shipped performance
model. Each one's capacity is measured like the routed engine's (simulator/capacity.py,
on the replayed length mix), so the scaler compares the arrival rate with numbers the
twin really sustains. The scaler's rule is the live one (`slo_planner.scaling`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from governor.settings import GovernorSettings
from predictor.shipped import performance_model_path
from simulator.capacity import saturate
from simulator.profile import EngineProfile, available_profiles, load_profile
from slo_planner.feasibility import IterationTimes
from slo_planner.scaling import EngineSize

_DEPLOYED = GovernorSettings()  # the scaler's settings a deployment runs with
SCALE_INTERVAL_S = _DEPLOYED.scale_interval_s  # the paper: every ~10 s
GRACE_S = _DEPLOYED.scale_grace_s
DRAIN_S = _DEPLOYED.scale_drain_s
ENGINE_LOAD_S = 20.0  # the paper: a shadow start takes more than 20 s


@dataclass(frozen=True)
class EngineOption:
    """One engine size the scaler may choose, with what runs and plans it."""

    size: EngineSize
    profile_name: str
    profile: EngineProfile
    model: IterationTimes


@dataclass(frozen=True)
class ScaleSetup:
    options: tuple[EngineOption, ...]  # ascending capacity
    load_s: float = ENGINE_LOAD_S
    interval_s: float = SCALE_INTERVAL_S
    grace_s: float = GRACE_S
    drain_s: float = DRAIN_S
    headroom: float = _DEPLOYED.scale_headroom

    def option(self, label: str) -> EngineOption:
        return next(option for option in self.options if option.size.label == label)


def sibling_profiles(profile_name: str) -> list[str]:
    """Profiles of the same GPU and model at every tensor-parallel degree, with a shipped
    performance model (the planner needs one per size)."""
    family = profile_name.rsplit("/", 1)[0]
    return [name for name in available_profiles()
            if name.rsplit("/", 1)[0] == family and performance_model_path(name).exists()]  # fmt: skip


def scale_setup(
    profile_name: str,
    prompt_tokens: Sequence[int],
    output_tokens: Sequence[int],
    planner_model: Callable[[str, EngineProfile], IterationTimes],
    seed: int = 0,
    measured: tuple[float, IterationTimes] | None = None,
) -> ScaleSetup:
    """Every sibling size, its capacity on this length mix, and its planner model
    (`planner_model(profile_name, profile)`). `measured`: `profile_name`'s own capacity
    and model, when the caller has them already."""
    options = []
    for name in sibling_profiles(profile_name):
        profile = load_profile(name)
        if name == profile_name and measured is not None:
            capacity_rps, model = measured
        else:
            capacity_rps = saturate(profile, prompt_tokens, output_tokens, seed=seed).capacity_rps
            model = planner_model(name, profile)
        label = name.rsplit("/", 1)[1]
        options.append(EngineOption(EngineSize(label, f"ensemble-{label}", capacity_rps), name,
                                    profile, model))  # fmt: skip
    if len(options) < 2:
        raise ValueError(f"throttllem+scale needs at least two sizes of {profile_name}'s "
                         "model with shipped performance models")  # fmt: skip
    options.sort(key=lambda option: option.size.capacity_rps)
    return ScaleSetup(tuple(options))
