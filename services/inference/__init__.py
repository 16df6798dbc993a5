"""Inference service: user sequences and item text in, vectors out (ONNX Runtime)."""
