"""Tokenize and batch exactly like the worker (``stream.inference.Scorer``).

Training, calibration, parity and the batch-invariance check all feed models through
these functions, so what is measured offline is what the worker computes.
``tests/export/test_roundtrip.py`` pins them to ``Scorer.score`` bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from stream.inference import CPU_CHUNK_SIZE

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def encode(tokenizer: Tokenizer, texts: Sequence[str], *, max_length: int) -> list[list[int]]:
    """Token ids per text; longer ones keep their head and the final [SEP], like the worker."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    return [e.ids if len(e.ids) <= max_length else [*e.ids[:max_length - 1], e.ids[-1]]
            for e in encodings]


def pad(rows: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """The worker's int64 inputs for one chunk, right-padded to its longest row."""
    width = max(len(r) for r in rows)
    feeds = {name: np.zeros((len(rows), width), dtype=np.int64) for name in INPUT_NAMES}
    for i, row in enumerate(rows):
        feeds["input_ids"][i, :len(row)] = row
        feeds["attention_mask"][i, :len(row)] = 1
    return feeds


def chunks(ids: Sequence[Sequence[int]], *, size: int = CPU_CHUNK_SIZE) -> list[np.ndarray]:
    """Row indices of the worker's chunks: sorted by length (stable), ``size`` rows each."""
    order = np.argsort(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), kind="stable")
    return [order[i:i + size] for i in range(0, len(order), size)]
