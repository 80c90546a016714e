"""All configuration, one class, read from `THROTTLLEM_*` environment variables.

docs/configuration.md holds `settings_reference()`; a test keeps the two in step.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackendKind(str, Enum):
    triton = "triton"


class StateStoreKind(str, Enum):
    memory = "memory"


class GpuBackendKind(str, Enum):
    simulated = "simulated"
    none = "none"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THROTTLLEM_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the gateway listens on.")

    backend_kind: BackendKind = Field(
        BackendKind.triton, description="Kind of inference server behind the gateway."
    )
    backend_url: str = Field(
        "http://127.0.0.1:8010", description="Base URL of the inference server (Triton HTTP)."
    )
    triton_model: str = Field(
        "ensemble", description="Triton model the gateway calls (the TensorRT-LLM ensemble)."
    )
    served_model_name: str = Field(
        "llama-2-13b", description="Model name clients use and `/v1/models` lists."
    )
    backend_timeout_s: float = Field(
        600.0, gt=0, description="Longest a single generation may take upstream, in seconds."
    )
    backend_connect_timeout_s: float = Field(
        5.0, gt=0, description="Time allowed to connect to the inference server, in seconds."
    )

    tokenizer_path: Path | None = Field(
        None,
        description="tokenizer.json of the served model; default: the bundled Llama 3 tokenizer.",
    )
    length_model_path: Path | None = Field(
        None,
        description="ONNX output-length model (onnx_models/length-*.onnx); none: no length "
        "predictions, and the governor holds default clocks.",
    )
    performance_model_path: Path | None = Field(
        None,
        description="ONNX performance model (onnx_models/performance-*.onnx); none: the "
        "governor holds default clocks.",
    )
    default_max_tokens: int = Field(
        16, ge=1, description="max_tokens for requests that do not set it (OpenAI's default)."
    )

    state_store: StateStoreKind = Field(
        StateStoreKind.memory, description="Where the shared request state lives."
    )

    gpu_backend: GpuBackendKind = Field(
        GpuBackendKind.none,
        description="GPU clock backend of the embedded governor: `simulated` (the twin's "
        "control API) or `none` (no governor in this process).",
    )
    gpu_control_url: str = Field(
        "http://127.0.0.1:8013", description="Base URL of the twin's GPU control API."
    )
    gpu_indices: list[int] = Field(
        default_factory=lambda: [0],
        description="GPUs of the tensor-parallel instance; all get the same clock.",
    )
    governor_window_ms: float = Field(
        100.0, gt=0, description="How often the governor re-decides the clock, in ms."
    )


def settings_reference() -> str:
    """The Markdown table of every setting, as docs/configuration.md shows it."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Enum):
            default = default.value
        shown = "(none)" if default is None else f"`{default}`"
        rows.append(f"| `THROTTLLEM_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_reference(), end="")
