"""Shipped ONNX models (output length, engine performance), each with a card beside it."""
