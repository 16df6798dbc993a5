"""The model: item tower (text encoder), user tower (ONNX contract), export and runtime.

Submodules are imported lazily by callers (``from recsys.model.text_encoder import ...``)
so that services that only run ONNX do not pay for importing transformers.
"""
