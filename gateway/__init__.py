"""The OpenAI-compatible gateway: what clients touch.

It owns HTTP, the OpenAI schemas, the backend clients, the state store and the
metrics; every decision it takes comes from `governor/` and `predictor/`.
"""
