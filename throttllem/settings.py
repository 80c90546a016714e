"""All configuration, one class, read from `THROTTLLEM_*` environment variables.

Each package owns the settings it reads (gateway, governor, scoreboard, planner,
predictor); this class composes them, so that every variable keeps its flat name and no
package imports another's settings. docs/configuration.md holds `settings_reference()`;
a test keeps the two in step.
"""

from __future__ import annotations

from enum import Enum

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.settings import BackendKind, GatewaySettings
from governor.settings import GovernorSettings
from predictor.settings import PredictorSettings
from slo_planner.settings import PlannerSettings
from slo_scoreboard.settings import ScoreboardSettings

PARTS = (
    ("Gateway", GatewaySettings),
    ("Predictors", PredictorSettings),
    ("Planner", PlannerSettings),
    ("Scoreboard", ScoreboardSettings),
    ("Governor and instance scaling", GovernorSettings),
)


class Settings(
    BaseSettings,
    GatewaySettings,
    PredictorSettings,
    PlannerSettings,
    ScoreboardSettings,
    GovernorSettings,
):
    model_config = SettingsConfigDict(env_prefix="THROTTLLEM_", extra="ignore")

    @model_validator(mode="after")
    def _scaling_needs_triton(self) -> Settings:
        if self.autoscale and self.backend_kind is not BackendKind.triton:
            raise ValueError("THROTTLLEM_AUTOSCALE works with the Triton backend only")
        return self


def settings_reference() -> str:
    """The Markdown tables of every setting, by the part that reads it, as
    docs/configuration.md shows them."""
    sections = []
    for title, part in PARTS:
        rows = [f"### {title}", "", "| variable | default | meaning |", "| --- | --- | --- |"]
        for name, field in part.model_fields.items():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, Enum):
                default = default.value
            shown = "(none)" if default is None else f"`{default}`"
            rows.append(f"| `THROTTLLEM_{name.upper()}` | {shown} | {field.description} |")
        sections.append("\n".join(rows) + "\n")
    return "\n".join(sections)


if __name__ == "__main__":
    print(settings_reference(), end="")
