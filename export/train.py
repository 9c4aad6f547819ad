"""Fine-tune the top of a BERT encoder to output the logit of P(up).

Loss is MSE between sigmoid(logit) and the 0/1 label. Embeddings and the lower encoder
layers are frozen and run in eval mode, so their outputs are computed once per example
and cached; each step then runs only the top ``trainable_layers`` + pooler + head, with
dropout, under AdamW (decoupled weight decay). The model is selected by validation ROC-AUC
(its loss is logged beside it): the validation window is a different season with a
different base rate, which the Brier loss would mostly measure. Training stops at the
first of max epochs, the time budget or ``patience`` epochs without a better AUC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_auc_score
from tqdm import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
)

from stream.artifact import Metrics
from stream.batching import chunks, pad

log = logging.getLogger(__name__)

_CACHE_CHUNK = 32


class TrainConfig(BaseModel):
    """Hyperparameters and the training budget (stored in the manifest)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trainable_layers: int = Field(2, ge=1, description="top encoder layers trained")
    max_train_examples: int = Field(3000, ge=1, description="balanced sample of the training "
                                    "split, encoded once; every epoch passes over it")
    max_eval_examples: int = Field(3000, ge=1, description="random sample per evaluated split")
    max_epochs: int = Field(3, ge=1)
    max_seconds: float = Field(1800.0, gt=0, description="a safety net on the fine-tuning "
                               "time after the frozen layers are encoded; examples, epochs "
                               "and patience decide, so a busy machine trains the same model")
    patience: int = Field(1, ge=1, description="epochs without a better validation AUC")
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = 0


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What happened during fine-tuning; the model holds the best epoch's weights."""

    history: list[dict[str, float | None]]
    best_epoch: int
    stop_reason: str
    examples_seen: int
    val_scores: np.ndarray  # the best epoch's sigmoid scores on the validation examples


def base_model(path: Path, *, dropout: float, seed: int) -> BertForSequenceClassification:
    """The pretrained encoder with a fresh (seeded) one-logit head, from local files only."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, local_files_only=True, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout)


def tiny_model(*, vocab_size: int, max_length: int, seed: int) -> BertForSequenceClassification:
    """A randomly initialised 2-layer, 32-wide BERT for tests.

    Weights are drawn 10x wider than BERT's default (std 0.2): its scores then spread
    (std ~0.04) so that quantization error and batch effects are measurable, not ~1e-6.
    """
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, initializer_range=0.2,
                        max_position_embeddings=max_length, num_labels=1)
    return BertForSequenceClassification(config)


def freeze_lower(model: BertForSequenceClassification, *, trainable_layers: int) -> int:
    """Freeze embeddings and all but the top layers; return the number of frozen layers."""
    n_frozen = max(0, model.config.num_hidden_layers - trainable_layers)
    for module in (model.bert.embeddings, *model.bert.encoder.layer[:n_frozen]):
        module.requires_grad_(False)
    return n_frozen


def _extended(model: BertForSequenceClassification, mask: torch.Tensor) -> torch.Tensor:
    return model.bert.get_extended_attention_mask(mask, tuple(mask.shape))


def _lower(model: BertForSequenceClassification, feeds: dict[str, np.ndarray],
           n_frozen: int) -> torch.Tensor:
    ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
    hidden = model.bert.embeddings(input_ids=ids,
                                   token_type_ids=torch.from_numpy(feeds["token_type_ids"]))
    for layer in model.bert.encoder.layer[:n_frozen]:
        hidden = layer(hidden, attention_mask=_extended(model, mask))[0]
    return hidden


def _upper(model: BertForSequenceClassification, hidden: torch.Tensor, mask: torch.Tensor,
           n_frozen: int) -> torch.Tensor:
    """Logits [batch] from the frozen part's output."""
    for layer in model.bert.encoder.layer[n_frozen:]:
        hidden = layer(hidden, attention_mask=_extended(model, mask))[0]
    return model.classifier(model.dropout(model.bert.pooler(hidden)))[:, 0]


@torch.no_grad()
def cache_lower(model: BertForSequenceClassification, ids: Sequence[Sequence[int]], *,
                n_frozen: int, desc: str) -> list[torch.Tensor]:
    """Per example, the frozen layers' output [tokens, hidden] (eval mode, unpadded)."""
    model.eval()
    cache: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    for rows in tqdm(chunks(ids, size=_CACHE_CHUNK), desc=desc, leave=False, mininterval=5):
        hidden = _lower(model, pad([ids[i] for i in rows]), n_frozen)
        for j, i in enumerate(rows):
            cache[i] = hidden[j, :len(ids[i])].clone()
    return cache


def _collate(cache: Sequence[torch.Tensor], rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = torch.nn.utils.rnn.pad_sequence([cache[i] for i in rows], batch_first=True)
    mask = torch.zeros(hidden.shape[:2], dtype=torch.int64)
    for j, i in enumerate(rows):
        mask[j, :len(cache[i])] = 1
    return hidden, mask


@torch.no_grad()
def scores_from_cache(model: BertForSequenceClassification, cache: Sequence[torch.Tensor], *,
                      n_frozen: int) -> np.ndarray:
    """sigmoid(logit) per cached example (eval mode)."""
    model.eval()
    out = np.empty(len(cache), dtype=np.float64)
    for rows in chunks(cache, size=_CACHE_CHUNK):  # a cached example's len() is its tokens
        out[rows] = torch.sigmoid(_upper(model, *_collate(cache, rows), n_frozen)).numpy()
    return out


@torch.no_grad()
def predict(model: BertForSequenceClassification, ids: Sequence[Sequence[int]], *,
            chunk_size: int = _CACHE_CHUNK) -> np.ndarray:
    """sigmoid(logit) of the full model (eval mode), fed in the worker's chunking."""
    model.eval()
    out = np.empty(len(ids), dtype=np.float64)
    for rows in chunks(ids, size=chunk_size):
        feeds = {k: torch.from_numpy(v) for k, v in pad([ids[i] for i in rows]).items()}
        out[rows] = torch.sigmoid(model(**feeds).logits[:, 0]).numpy()
    return out


def _sortish_batches(lengths: np.ndarray, *, batch_size: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths (less padding): sort within pools of 32 batches."""
    order = rng.permutation(len(lengths))
    pool = batch_size * 32
    order = np.concatenate([p[np.argsort(lengths[p], kind="stable")]
                            for p in np.split(order, range(pool, len(order), pool))])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def evaluate(labels: np.ndarray, scores: np.ndarray, *, prior_label: int) -> Metrics:
    """ROC-AUC, accuracy at 0.5, Brier and the constant prior's accuracy on one split."""
    y = labels.astype(np.float64)
    auc = float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else None
    return Metrics(n=len(y), roc_auc=auc, accuracy=float(((scores >= 0.5) == y).mean()),
                   prior_accuracy=float((y == prior_label).mean()), positive_rate=float(y.mean()),
                   brier=float(((scores - y) ** 2).mean()))


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def _epoch(model: BertForSequenceClassification, optimizer: torch.optim.Optimizer,
           cache: Sequence[torch.Tensor], y: torch.Tensor, *, n_frozen: int,
           config: TrainConfig, rng: np.random.Generator, deadline: float,
           desc: str) -> tuple[float, int]:
    """One pass (or until the deadline); returns (mean train loss, examples seen)."""
    model.train()
    lengths = np.fromiter((len(c) for c in cache), dtype=np.int64, count=len(cache))
    total, seen = 0.0, 0
    for rows in tqdm(_sortish_batches(lengths, batch_size=config.batch_size, rng=rng),
                     desc=desc, leave=False, mininterval=5):
        loss = ((torch.sigmoid(_upper(model, *_collate(cache, rows), n_frozen)) - y[rows]) ** 2)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
        total, seen = total + float(loss.detach().sum()), seen + len(rows)
        if time.monotonic() > deadline:
            break
    return total / max(1, seen), seen


def fine_tune(model: BertForSequenceClassification, *, train_ids: Sequence[Sequence[int]],
              train_labels: np.ndarray, val_ids: Sequence[Sequence[int]],
              val_labels: np.ndarray, config: TrainConfig) -> TrainResult:
    """Train the top of ``model`` in place; it ends with the best validation-AUC weights."""
    start = time.monotonic()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n_frozen = freeze_lower(model, trainable_layers=config.trainable_layers)
    train_cache = cache_lower(model, train_ids, n_frozen=n_frozen, desc="encode train")
    val_cache = cache_lower(model, val_ids, n_frozen=n_frozen, desc="encode val")
    log.info("cached frozen layers n_frozen=%d train=%d val=%d elapsed_s=%.1f", n_frozen,
             len(train_cache), len(val_cache), time.monotonic() - start)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.learning_rate, weight_decay=config.weight_decay)
    y = torch.as_tensor(train_labels, dtype=torch.float32)
    prior_label = int(train_labels.mean() > 0.5)
    # After the encoding: a 180 s budget that counted it left a loaded machine 16 training
    # examples (a new-user trial of make demo), i.e. an untrained model.
    deadline = time.monotonic() + config.max_seconds
    history: list[dict[str, float | None]] = []
    best, best_epoch, best_state, best_scores = -np.inf, 0, {}, np.empty(0)
    stop_reason, seen = "max_epochs", 0
    for epoch in range(1, config.max_epochs + 1):
        loss, n = _epoch(model, optimizer, train_cache, y, n_frozen=n_frozen, config=config,
                         rng=rng, deadline=deadline, desc=f"epoch {epoch}")
        seen += n
        scores = scores_from_cache(model, val_cache, n_frozen=n_frozen)
        val = evaluate(val_labels, scores, prior_label=prior_label)
        history.append({"epoch": epoch, "examples": n, "train_loss": loss,
                        "val_loss": val.brier, "val_roc_auc": val.roc_auc})
        log.info("epoch=%d examples=%d train_loss=%.4f val_loss=%.4f val_roc_auc=%s "
                 "elapsed_s=%.1f", epoch, n, loss, val.brier,
                 val.roc_auc and round(val.roc_auc, 4), time.monotonic() - start)
        criterion = val.roc_auc if val.roc_auc is not None else -(val.brier or 0.0)
        if criterion > best:
            best, best_epoch, best_scores = criterion, epoch, scores
            best_state = _trainable_state(model)
        elif epoch - best_epoch >= config.patience:
            stop_reason = "patience"
            break
        if time.monotonic() > deadline:
            stop_reason = "max_seconds"
            log.warning("fine-tuning stopped by the %.0f s safety net after %d examples "
                        "(of %d per epoch): the model may be undertrained",
                        config.max_seconds, seen, len(train_cache))
            break
    model.load_state_dict(best_state, strict=False)
    model.eval()
    return TrainResult(history=history, best_epoch=best_epoch, stop_reason=stop_reason,
                       examples_seen=seen, val_scores=best_scores)
