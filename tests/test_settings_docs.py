from pathlib import Path

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
