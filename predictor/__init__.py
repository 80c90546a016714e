"""Predictions the planner relies on: prompt tokens, output length, engine speed.

The length classifier and the performance model arrive with issue 4; the tokenizer
is here already because the gateway and the twin both count tokens with it.
"""
