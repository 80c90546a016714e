"""The OpenAI-compatible gateway: what clients touch.

The HTTP service only: routes, OpenAI schemas, backend clients, the admission queue,
metrics. Its collaborators (scoreboard, planner, predictors, a handle to poke the
governor) are built by the composition root and handed to `create_app`.
"""
