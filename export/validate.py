"""Parity: each ONNX variant must reproduce the PyTorch scores (sigmoid space) within atol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from export.convert import onnx_scores, session
from export.errors import ParityError
from stream.batching import chunks

PARITY_ATOL: Final = {"fp32": 1e-4, "int8": 0.05, "fp16": 0.01}
"""fp32 measures ~3e-7 (float reordering); 1e-4 leaves room for other CPUs. Static int8
measures up to ~0.04 (mean ~0.005) on the trained model, whose scores spread with std ~0.2;
0.05 flags a broken calibration (0.1+ when the GELU output is quantized) without failing
on expected rounding. fp16 measures 2.0e-4 (mean 2.4e-5) vs fp32 on the CPU provider;
CUDA's fp16 kernels may round more (trendstream gpu-check measures it); 0.01 still flags
an fp16 overflow or a broken conversion (scores off by 0.1+). Scores reach the trend rule
only as window means."""

_SHOWN_CHARS: Final = 60


@dataclass(frozen=True, slots=True)
class Parity:
    """Per-variant parity on the parity set."""

    max_abs_diff: float
    mean_abs_diff: float
    atol: float
    scores: np.ndarray


def parity_rows(lengths: np.ndarray, *, n: int = 64, n_long: int = 16,
                rng: np.random.Generator) -> np.ndarray:
    """Indices of a parity set: the ``n_long`` longest texts plus random others, ``n`` in all."""
    longest = np.argsort(-lengths, kind="stable")[:n_long]
    rest = np.setdiff1d(np.arange(len(lengths)), longest)
    others = rng.choice(rest, size=min(len(rest), n - len(longest)), replace=False)
    return np.sort(np.concatenate([longest, others]))


def check_parity(model_path: Path, ids: Sequence[Sequence[int]], reference: np.ndarray, *,
                 atol: float, texts: Sequence[str]) -> Parity:
    """Score ``ids`` with ONNX Runtime in the worker's chunking and compare with ``reference``.

    Raises ParityError listing every output beyond ``atol``.
    """
    scores = onnx_scores(session(model_path), ids, chunks(ids))
    diff = np.abs(scores - reference)
    failing = np.flatnonzero(diff > atol)
    if len(failing):
        lines = [f"  row {i}: pytorch={reference[i]:.6f} onnx={scores[i]:.6f} "
                 f"|diff|={diff[i]:.2e} text={texts[i][:_SHOWN_CHARS]!r}" for i in failing]
        msg = (f"{model_path}: {len(failing)} of {len(ids)} parity outputs differ from PyTorch "
               f"by more than atol={atol}:\n" + "\n".join(lines) +
               "\nthe export or quantization is broken; do not ship this model")
        raise ParityError(msg)
    return Parity(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()), atol=atol,
                  scores=scores)
