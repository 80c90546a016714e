"""The demo's traffic, so that the dashboard has something to show: streamed completions
of a few lengths, arriving as a Poisson process.

Environment: LOAD_TARGET (the gateway's base URL), LOAD_MODEL, LOAD_RATE_PER_S.
"""

from __future__ import annotations

import asyncio
import os
import random

import httpx

PROMPTS = [
    "Explain how a GPU's clock frequency affects its power draw.",
    "Write a short poem about a quiet data center at night.",
    "List three ways to make a web service use less energy.",
    "Summarize the idea of admission control in one paragraph.",
    "What is the difference between latency and throughput?",
]


async def complete(client: httpx.AsyncClient, model: str, rng: random.Random) -> None:
    body = {
        "model": model,
        "prompt": rng.choice(PROMPTS),
        "max_tokens": rng.choice([32, 64, 128, 256]),
        "stream": True,
    }
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            async for _ in response.aiter_lines():
                pass
    except httpx.HTTPError as error:
        print(f"load: {type(error).__name__}: {error}", flush=True)


async def main() -> None:
    target = os.environ.get("LOAD_TARGET", "http://127.0.0.1:8000")
    model = os.environ.get("LOAD_MODEL", "llama-2-13b")
    rate_per_s = float(os.environ.get("LOAD_RATE_PER_S", "0.5"))
    rng = random.Random(0)
    running: set[asyncio.Task[None]] = set()
    print(f"load: {rate_per_s} requests/s to {target}, model {model}", flush=True)
    async with httpx.AsyncClient(base_url=target, timeout=600.0) as client:
        while True:
            await asyncio.sleep(rng.expovariate(rate_per_s))
            task = asyncio.create_task(complete(client, model, rng))
            running.add(task)
            task.add_done_callback(running.discard)


if __name__ == "__main__":
    asyncio.run(main())
