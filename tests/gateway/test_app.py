"""The gateway in process, with no inference server behind it: errors keep OpenAI's shape."""

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from tests.servers import free_ports


@pytest.fixture
async def gateway() -> AsyncIterator[httpx.AsyncClient]:
    (closed_port,) = free_ports(1)  # nothing listens there: the backend is down
    app = create_app(
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
    app = create_app(settings)
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
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        predictions = app.state.services.predictions
        assert predictions.problems == {}
        assert predictions.length is not None and predictions.performance is not None
        assert predictions.performance.grid.tp == 1
