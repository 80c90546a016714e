"""Several engine sizes in one Triton, each loadable through the repository API.

PyTriton binds Python models by handing Triton their files at load time, so an unloaded
PyTriton model cannot be loaded again from the repository, and a Triton ensemble over
one makes Triton try (and fail) to reload it. Each size's engine is therefore bound once
as `engine-<label>` and stays loaded, and the model clients call, `ensemble-<label>`, is
a small Python-backend model written into the repository that forwards each request to
its engine through Triton's business-logic scripting (BLS), streaming the answers back.
It loads and unloads through `POST /v2/repository/models/ensemble-<label>/(un)load`
like any model, and serves nothing while unloaded. TensorRT-LLM's `tensorrt_llm_bls`
model is the same shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulator.triton_model import INPUTS, OUTPUTS, TensorSpec

_TRITON_TYPES = {bytes: "TYPE_STRING", np.int32: "TYPE_INT32", np.bool_: "TYPE_BOOL",
                 np.float32: "TYPE_FP32", np.uint64: "TYPE_UINT64"}  # fmt: skip


def size_label(profile_name: str) -> str:
    """`a100-40gb/llama-2-13b/tp2` -> `tp2`."""
    return profile_name.rstrip("/").rsplit("/", 1)[-1]


def engine_model_name(label: str) -> str:
    return f"engine-{label}"


def ensemble_model_name(label: str) -> str:
    return f"ensemble-{label}"


def write_ensemble(model_store: Path, label: str) -> str:
    """Write `ensemble-<label>` (version 1) into the repository; its name."""
    name = ensemble_model_name(label)
    directory = model_store / name
    (directory / "1").mkdir(parents=True, exist_ok=True)
    (directory / "1" / "model.py").write_text(_FORWARDER)
    (directory / "config.pbtxt").write_text(forwarder_config(name, engine_model_name(label)))
    return name


def forwarder_config(name: str, engine_model: str) -> str:
    inputs = ",\n".join(_tensor(spec, optional=spec.optional) for spec in INPUTS)
    outputs = ",\n".join(_tensor(spec, optional=False) for spec in OUTPUTS)
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
        "model_transaction_policy { decoupled: true }\n"
        f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
        f'parameters {{ key: "engine_model" value: {{ string_value: "{engine_model}" }} }}\n'
    )


def _tensor(spec: TensorSpec, optional: bool) -> str:
    flag = " optional: true" if optional else ""
    return f'  {{ name: "{spec.name}" data_type: {_TRITON_TYPES[spec.dtype]} dims: [ 1 ]{flag} }}'


# Runs inside Triton's Python-backend stub, which provides triton_python_backend_utils.
_FORWARDER = """\
import json
import threading

import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    \"\"\"Forwards each request to the engine model, streaming its answers back.\"\"\"

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.engine_model = config["parameters"]["engine_model"]["string_value"]
        self.outputs = [output["name"] for output in config["output"]]

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self.forward, args=(request,), daemon=True).start()
        return None

    def forward(self, request):
        sender = request.get_response_sender()
        try:
            engine_request = pb_utils.InferenceRequest(
                model_name=self.engine_model,
                inputs=request.inputs(),
                requested_output_names=self.outputs,
            )
            for response in engine_request.exec(decoupled=True):
                if response.has_error():
                    sender.send(pb_utils.InferenceResponse(error=response.error()), flags=FINAL)
                    return
                tensors = response.output_tensors()
                if tensors:
                    sender.send(pb_utils.InferenceResponse(output_tensors=tensors))
        except Exception as error:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))),
                        flags=FINAL)
            return
        sender.send(flags=FINAL)
"""
