"""Offline export: review files -> trend labels -> fine-tuned model -> checked ONNX model directory.

Heavy dependencies (torch, transformers, optimum) live here only; ``stream`` never imports them.
Run it as ``trendstream export`` or ``python -m export``.
"""
