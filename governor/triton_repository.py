"""Triton's model repository API: load, unload, and readiness of a model.

    POST /v2/repository/models/{name}/load     (blocks until loaded, or fails)
    POST /v2/repository/models/{name}/unload
    GET  /v2/models/{name}/ready               (200 when it serves)

Triton started with `--http-restricted-api=model-repository:<header>=<token>` answers
403 without that header; `access_header` carries it (PyTriton's header is
`triton-access-token`). Triton must run with `--model-control-mode=explicit`.
"""

from __future__ import annotations

import httpx

# TensorRT-LLM engines take tens of seconds to load (the paper: > 20 s).
LOAD_TIMEOUT_S = 300.0


class RepositoryError(Exception):
    """Triton refused or failed a repository request; the message says which and why."""


class TritonRepository:
    def __init__(
        self,
        base_url: str,
        access_header: tuple[str, str] | None = None,
        load_timeout_s: float = LOAD_TIMEOUT_S,
    ) -> None:
        headers = dict([access_header]) if access_header else {}
        timeout = httpx.Timeout(10.0, read=load_timeout_s)
        self._client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def load(self, model: str) -> None:
        await self._post(f"/v2/repository/models/{model}/load", "load", model)

    async def unload(self, model: str) -> None:
        await self._post(f"/v2/repository/models/{model}/unload", "unload", model)

    async def ready(self, model: str) -> bool:
        try:
            response = await self._client.get(f"/v2/models/{model}/ready")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, verb: str, model: str) -> None:
        try:
            response = await self._client.post(path, json={})
        except httpx.TransportError as error:
            raise RepositoryError(
                f"cannot {verb} {model!r}: Triton unreachable: {error!r}"
            ) from error
        if response.status_code == 200:
            return
        hint = ""
        if response.status_code == 403:
            hint = " (set THROTTLLEM_TRITON_REPOSITORY_TOKEN to Triton's restricted-API token)"
        elif response.status_code == 400 and "explicit" in response.text:
            hint = " (start Triton with --model-control-mode=explicit)"
        raise RepositoryError(
            f"Triton refused to {verb} {model!r}: HTTP {response.status_code} "
            f"{response.text[:200]}{hint}"
        )
