"""Scorer: tokenizer + ONNX Runtime session. One batch of texts in, scores out.

Synchronous and Kafka-free: the worker calls it from an executor thread (ONNX Runtime
releases the GIL), ``trendstream score`` and the export parity check call it directly.
On CUDA a batch runs whole (not chunked) through IO binding: the inputs are copied to
the device once, the logits are left there by the run and copied back after it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
from tokenizers import Tokenizer

from stream.artifact import Manifest, Variant, load_model_dir, read_manifest
from stream.batching import CPU_CHUNK_SIZE, chunks, pad, truncate
from stream.errors import ArtifactError, RuntimeMissingError

if TYPE_CHECKING:
    from stream.settings import Settings

log = logging.getLogger(__name__)

MAX_UNK_RATIO: Final = 0.5
"""Above this share of [UNK] tokens the model cannot read the text: the review counts
toward volume but not toward the text signal."""

Provider = Literal["cpu", "cuda"]


def import_onnxruntime() -> ModuleType:
    """Import ONNX Runtime or explain which extra to install."""
    installed = [d for d in ("onnxruntime", "onnxruntime-gpu") if _has_distribution(d)]
    if len(installed) > 1:
        msg = ("both onnxruntime and onnxruntime-gpu are installed; they share one module "
               "folder and break each other. Uninstall both, then install exactly one extra: "
               "`trendstream[cpu]` or `trendstream[gpu]`.")
        raise RuntimeMissingError(msg)
    try:
        import onnxruntime
    except ImportError as exc:
        msg = ("ONNX Runtime is not installed. Install exactly one of the extras: "
               "`pip install 'trendstream[cpu]'` (onnxruntime) or "
               "`pip install 'trendstream[gpu]'` (onnxruntime-gpu); never both.")
        raise RuntimeMissingError(msg) from exc
    # ONNX Runtime 1.32's Linux wheel keeps a device id and event store under ~/.cache and
    # carries a telemetry endpoint; a stream worker has no business phoning home.
    if hasattr(onnxruntime, "disable_telemetry_events"):
        onnxruntime.disable_telemetry_events()
    return onnxruntime


def _has_distribution(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def review_text(title: str | None, text: str) -> str:
    """The string the model reads for a review (training and serving use this one)."""
    title = (title or "").strip()
    return f"{title}. {text}" if title else text


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """Scores and text diagnostics, aligned with the input order."""

    scores: np.ndarray  # float32, P(up) in [0, 1]
    unk_ratio: np.ndarray  # float32
    n_tokens: np.ndarray  # int32, before truncation
    is_truncated: np.ndarray  # bool


def load_tokenizer(path: Path, *, max_length: int) -> Tokenizer:
    """The model's fast tokenizer, truncating to ``max_length``, no fixed padding."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _session_options(ort: ModuleType, intra_op_threads: int, allow_spinning: bool) -> object:
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning",
                                  "1" if allow_spinning else "0")
    opts.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def _providers(ort: ModuleType, wanted: str) -> list[str]:
    available = ort.get_available_providers()
    if wanted in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if wanted == "cuda":
        msg = f"execution_provider=cuda but ONNX Runtime offers only {available}; " \
              "install the `gpu` extra or set TRENDSTREAM_EXECUTION_PROVIDER=cpu"
        raise RuntimeMissingError(msg)
    return ["CPUExecutionProvider"]


class Scorer:
    """Scores review texts with one model variant on one ONNX Runtime session."""

    def __init__(self, model_dir: Path, *, variant: str = "auto", provider: str = "auto",
                 intra_op_threads: int = 0, allow_spinning: bool = True,
                 verify: bool = True) -> None:
        ort = import_onnxruntime()
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = load_model_dir(self.model_dir) if verify else \
            read_manifest(self.model_dir)
        ort.set_default_logger_severity(3)  # CUDA-unavailable fallback chatter
        providers = _providers(ort, provider)
        first = self._pick_variant(variant, "cuda" if providers[0].startswith("CUDA") else "cpu")
        self.session = ort.InferenceSession(str(self.model_dir / first.file),
                                            sess_options=_session_options(ort, intra_op_threads,
                                                                          allow_spinning),
                                            providers=providers)
        self.provider: Provider = "cuda" if self.session.get_providers()[0].startswith("CUDA") \
            else "cpu"
        if self.provider == "cpu" and providers[0].startswith("CUDA"):
            first = self._reload_for_cpu(ort, variant, intra_op_threads, allow_spinning, first)
        self.variant = first
        self.chunk_size = CPU_CHUNK_SIZE if self.provider == "cpu" else 1 << 30
        self._ort = ort
        self._input_names = [i.name for i in self.session.get_inputs()]
        self._output_name = self.session.get_outputs()[0].name
        self.tokenizer = load_tokenizer(self.model_dir / self.manifest.tokenizer_file,
                                        max_length=self.manifest.max_length)
        self.max_length = self.manifest.max_length
        log.info("scorer ready model_id=%s variant=%s provider=%s threads=%s",
                 self.model_id, self.variant.precision, self.provider, intra_op_threads or "auto")

    @classmethod
    def from_settings(cls, settings: Settings) -> Scorer:
        """The scorer the worker runs: model, variant, provider and threads from settings."""
        return cls(settings.model_dir, variant=settings.model_variant,
                   provider=settings.execution_provider,
                   intra_op_threads=settings.ort_intra_op_threads,
                   allow_spinning=settings.ort_allow_spinning)

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    def _pick_variant(self, variant: str, provider: Provider) -> Variant:
        name = self.manifest.default_variant[provider] if variant == "auto" else variant
        if name not in self.manifest.variants:
            msg = (f"{self.model_dir}: variant {name!r} not in the manifest "
                   f"({sorted(self.manifest.variants)}); set TRENDSTREAM_MODEL_VARIANT")
            raise ArtifactError(msg)
        return self.manifest.variants[name]

    def _reload_for_cpu(self, ort: ModuleType, variant: str, threads: int, spinning: bool,
                        current: Variant) -> Variant:
        chosen = self._pick_variant(variant, "cpu")
        if chosen.file != current.file:
            self.session = ort.InferenceSession(str(self.model_dir / chosen.file),
                                                sess_options=_session_options(ort, threads,
                                                                              spinning),
                                                providers=["CPUExecutionProvider"])
        return chosen

    def run_chunk(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """sigmoid(logit) of one chunk of token ids, right-padded to its longest row."""
        feeds = pad(ids)
        inputs = {k: feeds[k] for k in self._input_names}
        logits = self._run_bound(inputs, device="cuda") if self.provider == "cuda" \
            else self.session.run(None, inputs)[0]
        return 1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float64)))

    def _run_bound(self, feeds: dict[str, np.ndarray], *, device: str) -> np.ndarray:
        """The logits through IO binding: inputs copied to ``device`` 0, output bound there."""
        binding = self.session.io_binding()
        values = {name: self._ort.OrtValue.ortvalue_from_numpy(array, device, 0)
                  for name, array in feeds.items()}  # held until the run is done
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self._output_name, device, 0)
        self.session.run_with_iobinding(binding)
        logits: np.ndarray = binding.copy_outputs_to_cpu()[0]
        return logits

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated like the scorer does."""
        return [truncate(e.ids, self.max_length)
                for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

    def score(self, texts: Sequence[str]) -> ScoredBatch:
        """Score texts in length-sorted chunks; results follow the input order."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int32,
                              count=len(encodings))
        ids = [truncate(e.ids, self.max_length) for e in encodings]
        scores = np.empty(len(ids), dtype=np.float32)
        for idx in chunks(ids, size=self.chunk_size):
            scores[idx] = self.run_chunk([ids[i] for i in idx])
        unk = self.manifest.unk_token_id
        unk_ratio = np.fromiter(
            (e.ids[1:-1].count(unk) / max(1, len(e.ids) - 2) for e in encodings),
            dtype=np.float32, count=len(encodings))
        return ScoredBatch(scores=scores, unk_ratio=unk_ratio, n_tokens=lengths,
                           is_truncated=lengths > self.max_length)


