"""Predictions the planner relies on: prompt tokens, output length, engine speed, and
the projection of the engine's batch and KV cache over the iterations to come.

The length classifier and the performance model are ONNX files (onnx_models/); the
training pipelines that make them are in `predictor.training`.
"""
