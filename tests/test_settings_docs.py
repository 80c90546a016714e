from pathlib import Path

import pytest
from pydantic import ValidationError

from throttllem.settings import Settings, settings_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_setting_has_a_description():
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"


def test_the_configuration_doc_shows_the_current_settings():
    # Regenerate with: python -m throttllem.settings
    assert settings_reference() in DOC.read_text()


def test_settings_come_from_throttllem_environment_variables(monkeypatch):
    monkeypatch.setenv("THROTTLLEM_PORT", "9123")
    monkeypatch.setenv("THROTTLLEM_GPU_INDICES", "[0, 1]")
    settings = Settings()
    assert settings.port == 9123
    assert settings.gpu_indices == [0, 1]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("THROTTLLEM_ENGINE_SCHEDULER_POLICY", "fcfs"),
        ("THROTTLLEM_GOVERNOR_ARRIVAL_QUANTILE", "1.0"),
        ("THROTTLLEM_GOVERNOR_ARRIVAL_HORIZON_S", "-1"),
        ("THROTTLLEM_GOVERNOR_LENGTH_QUANTILE", "0.4"),
        ("THROTTLLEM_PREFILL_NS_PER_SQUARE_TOKEN", "-0.5"),
    ],
)
def test_the_planners_settings_refuse_what_it_cannot_plan_with(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("THROTTLLEM_").lower()):
        Settings()
