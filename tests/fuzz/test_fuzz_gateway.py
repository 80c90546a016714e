"""Fuzzing from outside: generated near-valid requests against `throttllem serve` in front
of the twin in Triton. No 5xx, every 4xx in OpenAI's error shape, nothing left on the
scoreboard. `make test` runs a bounded number; `FUZZ_EXAMPLES=10000` runs more
(`make fuzz`)."""

from __future__ import annotations

import collections
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.requests import MODEL, FuzzRequest, fuzz_requests
from tests.integration.stack import running_twin
from tests.servers import free_ports, server_process

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
ADMIN = {"Authorization": "Bearer admin-secret"}
STATUSES: collections.Counter[int] = collections.Counter()
REFUSED: collections.Counter[str] = collections.Counter()  # the param each 4xx named


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Small limits keep a valid example short: a few tokens, a 64-token context."""
    log_dir = tmp_path_factory.mktemp("fuzz")
    with running_twin(log_dir) as twin:
        (port,) = free_ports(1)
        env = {**os.environ, "THROTTLLEM_BACKEND_URL": twin.triton_url,
               "THROTTLLEM_SERVED_MODEL_NAME": MODEL, "THROTTLLEM_ADMIN_TOKEN": "admin-secret",
               "THROTTLLEM_DEFAULT_MAX_TOKENS": "4", "THROTTLLEM_CONTEXT_WINDOW_TOKENS": "64",
               "THROTTLLEM_MAX_BODY_BYTES": "1000000"}  # fmt: skip
        command = [sys.executable, "-m", "throttllem", "serve", "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        with server_process(command, log_dir / "serve.log", f"{url}/health/ready", 60, env=env):
            yield url


@pytest.fixture(scope="module")
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=60) as client:
        yield client


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 200,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])  # fmt: skip
@given(request=fuzz_requests())
def test_no_request_gets_a_5xx_and_every_4xx_is_in_openais_shape(
    client: httpx.Client, request: FuzzRequest
):
    headers = {"content-type": "application/json", **request.headers}
    response = client.post(request.path, content=request.body, headers=headers)
    STATUSES[response.status_code] += 1
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        REFUSED[str(error["param"])] += 1


def test_nothing_is_left_on_the_scoreboard_afterwards(client: httpx.Client, gateway_url: str):
    deadline_s = time.monotonic() + 30.0
    while client.get("/admin/scoreboard", headers=ADMIN).json()["requests"]:
        assert time.monotonic() < deadline_s, "the scoreboard kept requests after the fuzzing"
        time.sleep(0.1)
    metrics = client.get("/metrics").text
    assert "throttllem_queue_length 0.0" in metrics
    report = os.environ.get("FUZZ_REPORT")
    if report:
        Path(report).write_text(f"{sum(STATUSES.values())} requests, statuses {dict(STATUSES)}; "
                          f"4xx by param {dict(REFUSED.most_common())}\n")  # fmt: skip
