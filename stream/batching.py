"""Tokenization and micro-batch layout shared by the worker and the export.

The worker's Scorer, training, calibration, parity and the batch-invariance check all
feed models through these functions, so what is measured offline is what the worker
computes. On CPU a batch is sorted by token length (stable) and cut into chunks of
``CPU_CHUNK_SIZE``, each right-padded to its longest row: padding is what costs there.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Final

import numpy as np
from tokenizers import Tokenizer

CPU_CHUNK_SIZE: Final = 8
INPUT_NAMES: Final = ("input_ids", "attention_mask", "token_type_ids")


def truncate(ids: list[int], max_length: int) -> list[int]:
    """Keep the head of the review and its final [SEP] token."""
    return ids if len(ids) <= max_length else [*ids[:max_length - 1], ids[-1]]


def encode(tokenizer: Tokenizer, texts: Sequence[str], *, max_length: int) -> list[list[int]]:
    """Token ids per text, truncated to ``max_length`` (head + final [SEP])."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    return [truncate(e.ids, max_length) for e in encodings]


def pad(rows: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """The worker's int64 inputs for one chunk, right-padded to its longest row."""
    width = max(len(r) for r in rows)
    feeds = {name: np.zeros((len(rows), width), dtype=np.int64) for name in INPUT_NAMES}
    for i, row in enumerate(rows):
        feeds["input_ids"][i, :len(row)] = row
        feeds["attention_mask"][i, :len(row)] = 1
    return feeds


def chunks(ids: Sequence[Sized], *, size: int = CPU_CHUNK_SIZE) -> list[np.ndarray]:
    """Row indices of the chunks: sorted by length (stable), ``size`` rows each."""
    order = np.argsort(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), kind="stable")
    return [order[i:i + size] for i in range(0, len(order), size)]
