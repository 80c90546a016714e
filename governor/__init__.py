"""The governor: decides the lowest GPU clock that keeps every promise, and applies it.

It knows nothing of HTTP or OpenAI: it reads a board of requests and talks to GPUs
through the `GpuClock` interface.
"""
