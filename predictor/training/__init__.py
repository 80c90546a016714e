"""Pipelines that make the shipped models: train, evaluate, export to ONNX.

They need the `training` extra (LightGBM, scikit-learn, skl2onnx, onnxmltools); the
runtime side (`predictor.performance`, `predictor.length`) needs only onnxruntime.
"""
