"""The simple deep baseline: token embeddings + one LSTM layer, trained from scratch.

Same WordPiece ids as the transformer (no pretrained weights), masked mean over the
LSTM states, one logit; sigmoid output trained with MSE like the transformer, Adam,
dropout, the epoch with the best validation ROC-AUC kept, within a time budget.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from stream.batching import chunks

_BATCH = 32


class LstmScorer(torch.nn.Module):
    """Embedding(64) -> LSTM(64) -> masked mean -> dropout -> logit."""

    def __init__(self, vocab_size: int, *, dim: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = torch.nn.LSTM(dim, dim, batch_first=True)
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(dim, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).float()
        states, _ = self.lstm(self.embed(ids))
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(self.drop(pooled))[:, 0]


def _batch(ids: Sequence[Sequence[int]], rows: Sequence[int]) -> torch.Tensor:
    width = max(len(ids[i]) for i in rows)
    out = torch.zeros((len(rows), width), dtype=torch.long)
    for j, i in enumerate(rows):
        out[j, :len(ids[i])] = torch.as_tensor(ids[i])
    return out


@torch.no_grad()
def _scores(model: LstmScorer, ids: Sequence[Sequence[int]]) -> np.ndarray:
    model.eval()
    out = np.empty(len(ids))
    for rows in chunks(ids, size=_BATCH):
        out[rows] = torch.sigmoid(model(_batch(ids, rows))).numpy()
    return out


def train_lstm(train_ids: Sequence[Sequence[int]], train_labels: np.ndarray,
               val_ids: Sequence[Sequence[int]], val_labels: np.ndarray,
               test_ids: Sequence[Sequence[int]], *, vocab_size: int, max_epochs: int,
               max_seconds: float, seed: int) -> np.ndarray:
    """Train on train, select the epoch on val, return the test scores."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LstmScorer(vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-5)
    y = torch.as_tensor(train_labels, dtype=torch.float32)
    deadline, best, best_state = time.monotonic() + max_seconds, -np.inf, None
    for _ in range(max_epochs):
        model.train()
        order = rng.permutation(len(train_ids))
        for start in range(0, len(order), _BATCH):
            rows = order[start:start + _BATCH]
            loss = ((torch.sigmoid(model(_batch(train_ids, rows))) - y[rows]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if time.monotonic() > deadline:
                break
        val = _scores(model, val_ids)
        auc = roc_auc_score(val_labels, val) if 0 < val_labels.sum() < len(val_labels) \
            else -float(np.mean((val - val_labels) ** 2))
        if auc > best:
            best = auc
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if time.monotonic() > deadline:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return _scores(model, test_ids)
