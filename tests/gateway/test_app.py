"""The gateway in process, with no inference server behind it: errors keep OpenAI's shape."""

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.servers import free_ports
from throttllem.settings import Settings
from throttllem.wiring import create_gateway_app


@pytest.fixture
async def gateway() -> AsyncIterator[httpx.AsyncClient]:
    (closed_port,) = free_ports(1)  # nothing listens there: the backend is down
    app = create_gateway_app(
        Settings(backend_url=f"http://127.0.0.1:{closed_port}", backend_connect_timeout_s=1.0)
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


def completion_body(**fields: object) -> dict[str, object]:
    return {"model": "llama-2-13b", "prompt": "hi", "max_tokens": 4, **fields}


def assert_openai_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert error["message"]
    return error


async def test_a_down_backend_gives_503_and_not_ready(gateway: httpx.AsyncClient):
    response = await gateway.post("/v1/completions", json=completion_body())
    assert_openai_error(response, 503, "service_unavailable")
    ready = await gateway.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"backend": False, "state_store": True}
    assert (await gateway.get("/health/live")).status_code == 200


async def test_a_down_backend_gives_503_before_any_stream_starts(gateway: httpx.AsyncClient):
    response = await gateway.post("/v1/completions", json=completion_body(stream=True))
    assert_openai_error(response, 503, "service_unavailable")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"stop": ["1", "2", "3", "4", "5"]}, "stop"),
        ({"best_of": 2}, "best_of"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
    ],
)
async def test_bad_fields_get_a_400_naming_the_field(gateway, fields, param):
    response = await gateway.post("/v1/completions", json=completion_body(**fields))
    assert assert_openai_error(response, 400, "invalid_request_error")["param"] == param


async def test_a_body_that_is_not_json_gets_a_400(gateway: httpx.AsyncClient):
    response = await gateway.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 400, "invalid_request_error")


async def test_an_unknown_model_gets_a_404_with_a_code(gateway: httpx.AsyncClient):
    response = await gateway.post("/v1/completions", json=completion_body(model="gpt-5"))
    assert assert_openai_error(response, 404, "not_found_error")["code"] == "model_not_found"


async def test_an_unknown_route_gets_an_openai_shaped_404(gateway: httpx.AsyncClient):
    assert_openai_error(await gateway.get("/v1/nothing"), 404, "not_found_error")


async def test_responses_are_counted_by_status(gateway: httpx.AsyncClient):
    await gateway.post("/v1/completions", json=completion_body(n=3))
    metrics = (await gateway.get("/metrics")).text
    assert 'throttllem_requests_total{endpoint="completions",status="400"} 1.0' in metrics


async def test_corrupt_or_missing_models_are_reported_and_the_gateway_still_starts(tmp_path):
    corrupt = tmp_path / "length.onnx"
    corrupt.write_bytes(b"garbage")
    settings = Settings(
        backend_url="http://127.0.0.1:9",
        length_model_path=corrupt,
        performance_model_path=tmp_path / "missing.onnx",
    )
    app = create_gateway_app(settings)
    async with app.router.lifespan_context(app):
        services = app.state.services
        assert "length.onnx" in services.predictions.problems["length"]
        assert "missing.onnx" in services.predictions.problems["performance"]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            assert (await client.get("/health/live")).status_code == 200
            metrics = (await client.get("/metrics")).text
    assert 'throttllem_predictor_ready{model="length"} 0.0' in metrics
    assert 'throttllem_predictor_ready{model="performance"} 0.0' in metrics


async def test_the_shipped_models_load():
    from predictor.shipped import length_model_path, performance_model_path

    settings = Settings(
        backend_url="http://127.0.0.1:9",
        length_model_path=length_model_path("llama-2-13b-chat-hf"),
        performance_model_path=performance_model_path("a100-40gb/llama-2-13b/tp1"),
    )
    app = create_gateway_app(settings)
    async with app.router.lifespan_context(app):
        predictions = app.state.services.predictions
        assert predictions.problems == {}
        assert predictions.length is not None and predictions.performance is not None
        assert predictions.performance.grid.tp == 1


@pytest.fixture
async def guarded() -> AsyncIterator[httpx.AsyncClient]:
    """A gateway with client keys, an admin token and a small body limit; backend down."""
    (closed_port,) = free_ports(1)
    settings = Settings(
        backend_url=f"http://127.0.0.1:{closed_port}",
        backend_connect_timeout_s=1.0,
        api_keys=["client-key"],
        admin_token="admin-key",
        max_body_bytes=2048,
        context_window_tokens=64,
    )
    app = create_gateway_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                     headers={"Authorization": "Bearer client-key"}) as client:  # fmt: skip
            yield client


async def test_without_a_valid_key_a_401_and_with_one_the_request_goes_on(guarded):
    body = completion_body()
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"}):
        error = assert_openai_error(
            await guarded.post("/v1/completions", json=body, headers=headers), 401,
            "invalid_request_error",
        )  # fmt: skip
        assert error["code"] == "invalid_api_key"
    assert (await guarded.get("/v1/models", headers={"Authorization": ""})).status_code == 401
    assert (await guarded.post("/v1/completions", json=body)).status_code == 503  # past the key
    assert (await guarded.get("/health/live", headers={"Authorization": ""})).status_code == 200


async def test_admin_endpoints_need_their_own_token_and_are_off_without_one(guarded, gateway):
    assert (await guarded.get("/admin/scoreboard")).status_code == 401  # a client key is not it
    answer = await guarded.get("/admin/scoreboard", headers={"Authorization": "Bearer admin-key"})
    assert answer.status_code == 200 and answer.json()["requests"] == []
    assert_openai_error(await gateway.get("/admin/scoreboard"), 404, "not_found_error")


async def test_a_failed_request_leaves_nothing_on_the_board(guarded):
    for stream in (False, True):
        await guarded.post("/v1/completions", json=completion_body(stream=stream))
    answer = await guarded.get("/admin/scoreboard", headers={"Authorization": "Bearer admin-key"})
    assert answer.json()["requests"] == [] and answer.json()["waiting_here"] == 0


async def test_a_body_over_the_limit_gets_a_413_declared_or_chunked(guarded):
    big = completion_body(prompt="x" * 4000)
    assert_openai_error(await guarded.post("/v1/completions", json=big), 413,
                        "invalid_request_error")  # fmt: skip

    async def chunked():
        yield b'{"model": "llama-2-13b", "prompt": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}'

    response = await guarded.post("/v1/completions", content=chunked(),
                                  headers={"content-type": "application/json"})  # fmt: skip
    assert_openai_error(response, 413, "invalid_request_error")
    assert response.headers["x-request-id"]


async def test_a_prompt_over_the_context_window_gets_a_400(guarded):
    response = await guarded.post(
        "/v1/completions", json=completion_body(prompt="word " * 70, max_tokens=4)
    )
    error = assert_openai_error(response, 400, "invalid_request_error")
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    response = await guarded.post(
        "/v1/completions", json=completion_body(prompt="hi", max_tokens=100)
    )
    assert assert_openai_error(response, 400, "invalid_request_error")["param"] == "max_tokens"


async def test_prompts_stay_out_of_the_logs_unless_asked(caplog: pytest.LogCaptureFixture):
    secret = "my-secret-prompt-words"
    for log_prompts in (False, True):
        caplog.clear()
        app = create_gateway_app(Settings(backend_url="http://127.0.0.1:9", log_prompts=log_prompts,
                                  backend_connect_timeout_s=1.0))  # fmt: skip
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://g") as client:
                with caplog.at_level("DEBUG"):
                    await client.post("/v1/completions", json=completion_body(prompt=secret))
        assert (secret in caplog.text) is log_prompts


async def test_readiness_says_when_a_predictor_file_did_not_load(tmp_path):
    """Traffic flows (at default clocks), so it stays a readiness detail, not a 503 of its
    own; before, /health/ready said nothing of it."""
    broken = tmp_path / "length.onnx"
    broken.write_bytes(b"not an onnx file")
    (closed_port,) = free_ports(1)
    app = create_gateway_app(Settings(backend_url=f"http://127.0.0.1:{closed_port}",
                                      backend_connect_timeout_s=1.0,
                                      length_model_path=broken))  # fmt: skip
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            planning = (await client.get("/health/ready")).json()["planning"]
    assert planning["active"] is False
    assert planning["length_model"] is False
    assert str(broken) in planning["problems"]["length"]
