"""The Dockerfile, read without a Docker engine: what the image runs, how it checks its
health, who it runs as, and that a change to the code does not reinstall dependencies."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib

from tests.deploy.manifests import (
    ROOT,
    dockerfile_instructions,
    env_of,
    exec_form,
    final_stage,
    gateway_routes,
    settings_variables,
    throttllem_variables,
)
from throttllem.cli import build_parser

DOCKERFILE = ROOT / "Dockerfile"
INSTRUCTIONS = dockerfile_instructions(DOCKERFILE)
FINAL = final_stage(INSTRUCTIONS)
PACKAGES = ["throttllem", "gateway", "governor", "predictor", "simulator", "onnx_models"]


def last(keyword: str) -> str:
    return [ins.text for ins in FINAL if ins.keyword == keyword][-1]


def test_it_builds_in_stages_from_a_slim_python_the_project_supports():
    args = {
        ins.text.split("=")[0]: ins.text.split("=", 1)[1]
        for ins in INSTRUCTIONS
        if ins.keyword == "ARG" and "=" in ins.text
    }
    bases = [ins.text.split()[0] for ins in INSTRUCTIONS if ins.keyword == "FROM"]
    assert len(bases) >= 2
    image = args["PYTHON_IMAGE"]
    assert all(base == "${PYTHON_IMAGE}" for base in bases)  # one interpreter for both stages
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", image), image
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = int(re.search(r"3\.(\d+)", requires).group(1))
    assert int(image.split(".")[1]) >= minor


def test_the_default_command_is_the_gateway_through_the_real_cli():
    entrypoint, command = exec_form(last("ENTRYPOINT")), exec_form(last("CMD"))
    assert entrypoint == ["throttllem"]
    args = build_parser().parse_args(command)
    assert args.command == "serve"


def test_the_gateway_in_the_image_listens_outside_the_container_on_its_exposed_port():
    env = env_of(FINAL)
    assert env["THROTTLLEM_HOST"] == "0.0.0.0"
    assert last("EXPOSE").split() == [env["THROTTLLEM_PORT"]]


def test_the_healthcheck_asks_the_gateway_for_readiness_on_the_port_it_listens_on():
    healthcheck = last("HEALTHCHECK")
    command = exec_form(healthcheck[healthcheck.index("CMD") + 3 :])
    script = command[command.index("-c") + 1]
    path = re.search(r"http://127\.0\.0\.1:%s(/[\w/]+)", script).group(1)
    assert path == "/health/ready"
    assert path in gateway_routes()
    default_port = re.search(r"'THROTTLLEM_PORT', '(\d+)'", script).group(1)
    assert default_port == env_of(FINAL)["THROTTLLEM_PORT"]
    # The check itself runs: against a closed port it must fail, not pass.
    closed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        env={**os.environ, "THROTTLLEM_PORT": "9"},
        timeout=30,
    )
    assert closed.returncode != 0


def test_the_image_runs_as_a_user_it_creates_not_as_root():
    user = last("USER")
    assert user not in {"root", "0", "0:0"}
    created = " ".join(ins.text for ins in FINAL if ins.keyword == "RUN")
    assert re.search(rf"useradd\b.*\b{re.escape(user)}\b", created)


def test_dependencies_install_from_pyproject_alone_before_the_code_is_copied():
    build = INSTRUCTIONS[: INSTRUCTIONS.index(FINAL[0])]
    copies = [(i, ins.text.split()) for i, ins in enumerate(build) if ins.keyword == "COPY"]
    installs = [
        i
        for i, ins in enumerate(build)
        if ins.keyword == "RUN" and "-r requirements.txt" in ins.text
    ]
    assert installs, "no dependency install from requirements.txt"
    first_code_copy = min(i for i, words in copies if words[0].rstrip("/") in PACKAGES)
    assert installs[0] < first_code_copy
    before = [words[0] for i, words in copies if i < installs[0]]
    assert before == ["pyproject.toml"]
    project_install = [ins.text for ins in build[first_code_copy:] if ins.keyword == "RUN"]
    assert any("--no-deps" in text and " ." in text for text in project_install)


def test_the_image_copies_every_package_the_project_ships():
    copied = {ins.text.split()[0].rstrip("/") for ins in INSTRUCTIONS if ins.keyword == "COPY"}
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    assert {pattern.rstrip("*") for pattern in include} <= copied
    assert "README.md" in copied  # pyproject's readme: the build needs it


def test_the_llama3_tokenizer_is_installed_without_its_pinned_dependencies_as_the_makefile_does():
    spec = re.search(r'"(llama3\.2-token-counter[^"]*)"', (ROOT / "Makefile").read_text()).group(1)
    runs = [ins.text for ins in INSTRUCTIONS if ins.keyword == "RUN" and spec in ins.text]
    assert runs and all("--no-deps" in text for text in runs)


def test_the_requirements_script_lists_the_dependencies_and_the_asked_extras(tmp_path):
    run = next(
        ins.text
        for ins in INSTRUCTIONS
        if ins.keyword == "RUN" and "> requirements.txt" in ins.text
    )
    script = run.split("\n", 1)[1]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    listed = subprocess.run(
        [sys.executable, "-"],
        input=script,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "EXTRAS": "twin"},
        check=True,
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = project["dependencies"] + project["optional-dependencies"]["twin"]
    assert listed.stdout.split("\n")[:-1] == expected


def test_every_throttllem_variable_the_image_sets_is_a_setting():
    env = env_of(INSTRUCTIONS)
    assert throttllem_variables(env)  # the check below has something to check
    assert throttllem_variables(env) <= settings_variables()


def test_the_build_context_keeps_out_the_venv_and_git_but_nothing_the_build_copies():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".venv", ".git"} <= set(patterns)
    for ins in INSTRUCTIONS:
        if ins.keyword == "COPY" and not ins.text.startswith("--from"):
            source = ins.text.split()[0]
            assert not any(fnmatch.fnmatch(source, p) for p in patterns), source
            assert (ROOT / source).exists(), source
