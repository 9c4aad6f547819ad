"""``trendstream gpu-check``: the GPU scoring path measured in one short run, one JSON file.

On a CUDA machine (onnxruntime-gpu; ``scripts/gpu-check.sh`` sets one up) it records:

* ``machine``: the GPU and driver (nvidia-smi, when present), the CPUs;
* ``provider``: the execution provider the sessions actually run on. Without
  ``allow_cpu`` anything but CUDA raises RuntimeMissingError saying what to check;
* ``parity``: on N bundled reviews (the quarter longest and random others), fp16 vs fp32
  on that provider, and each vs fp32 on the CPU provider (max / mean / p99 |score diff|);
* ``batch_invariance_max_abs_diff``: per variant, one review scored alone vs in the
  worker's micro-batches, on that provider;
* ``throughput``: reviews/s per raw batch policy for fp16 and fp32: ``stream.bench``'s
  policies plus fixed batches of 256 and 512 and length-sorted windows of 512
  (``worker-512``: one call per window on CUDA), tokenization included; ``speedup``:
  the best policy over one review per call (issue 4's target: >= 10 on the GPU).

``allow_cpu`` runs the same on the CPU provider (same keys, ``provider: cpu``) so the
check is testable without a GPU. This module imports neither faust nor torch.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import numpy as np

from stream.artifact import Manifest, read_manifest, sha256_file
from stream.bench import FIXED_SIZES, policies, time_raw
from stream.errors import ArtifactError, RuntimeMissingError
from stream.inference import Scorer, import_onnxruntime, review_text
from stream.replay import load_sorted
from stream.settings import REPO_ROOT

DEFAULT_DATA: Final = REPO_ROOT / "data" / "datafiniti-amazon-devices" / "reviews.jsonl.gz"
VARIANTS: Final = ("fp16", "fp32")
WIDE_SIZES: Final = (256, 512)
SORTED_WINDOW: Final = 512
TARGET_SPEEDUP: Final = 10.0
"""Issue 4: on the GPU the best batch policy should score >= 10x more reviews/s than
one review per call."""


def gpu_info() -> dict[str, Any]:
    """The GPUs nvidia-smi names (empty when it is absent or fails), and the driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"gpus": [], "driver": None, "source": None}
    query = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"gpus": [], "driver": None, "source": f"nvidia-smi failed: {exc}"}
    rows = [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line]
    return {"gpus": [{"name": r[0], "memory": r[1]} for r in rows if len(r) == 3],
            "driver": rows[0][2] if rows and len(rows[0]) == 3 else None,
            "source": "nvidia-smi"}


def _ort_info(ort: Any) -> dict[str, Any]:
    found = {}
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"distributions": found, "version": ort.__version__, "device": ort.get_device(),
            "available_providers": ort.get_available_providers()}


def _verified(model_dir: Path) -> Manifest:
    """The manifest, with the sha256 of each file this check reads verified (int8 may be absent)."""
    manifest = read_manifest(model_dir)
    missing = [v for v in VARIANTS if v not in manifest.variants]
    if missing:
        msg = (f"{model_dir}: no {missing} variant in the manifest "
               f"({sorted(manifest.variants)}); run `trendstream export-fp16 --model {model_dir}`")
        raise ArtifactError(msg)
    for rel in [manifest.variants[v].file for v in VARIANTS] + [manifest.tokenizer_file]:
        path = model_dir / rel
        if not path.is_file():
            raise ArtifactError(f"{path} is missing; carry it over with the model directory")
        if sha256_file(path) != manifest.files.get(rel):
            raise ArtifactError(f"{path}: sha256 does not match manifest.json (corrupt, or "
                                f"reassembled from parts wrongly); copy it again")
    return manifest


def _provider(ort: Any, *, allow_cpu: bool) -> str:
    """``cuda`` when the CUDA provider is offered; else ``cpu`` if allowed, else an error."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "cuda"
    if allow_cpu:
        return "cpu"
    msg = (f"ONNX Runtime {ort.__version__} offers {ort.get_available_providers()}, no "
           f"CUDAExecutionProvider: install onnxruntime-gpu alone (scripts/gpu-check.sh does "
           f"it in a fresh venv), or pass --allow-cpu to test the check on the CPU")
    raise RuntimeMissingError(msg)


def _scorer(model_dir: Path, variant: str, provider: str, threads: int) -> Scorer:
    scorer = Scorer(model_dir, variant=variant, provider=provider, intra_op_threads=threads,
                    verify=False)  # _verified checked the files it reads
    if scorer.provider != provider:
        msg = (f"the CUDA provider is offered but the {variant} session runs on "
               f"{scorer.session.get_providers()}: its CUDA/cuDNN libraries did not load "
               f"(ONNX Runtime logged why above). Put site-packages/nvidia/*/lib on "
               f"LD_LIBRARY_PATH and use an onnxruntime-gpu built for this CUDA major version")
        raise RuntimeMissingError(msg)
    return scorer


def _model_info(model_dir: Path, manifest: Manifest,
                scorers: dict[str, Scorer]) -> dict[str, Any]:
    return {"model_id": manifest.model_id, "max_length": manifest.max_length,
            "variants": {v: {"file": s.variant.file, "precision": s.variant.precision,
                             "bytes": (model_dir / s.variant.file).stat().st_size,
                             "session_providers": s.session.get_providers()}
                         for v, s in scorers.items()}}


def _diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "p99_abs_diff": float(np.quantile(d, 0.99))}


def _parity(scores: dict[str, np.ndarray], cpu_fp32: np.ndarray,
            manifest: Manifest) -> dict[str, Any]:
    fp16 = manifest.variants["fp16"]
    out: dict[str, Any] = {"fp16_vs_fp32": _diff(scores["fp16"], scores["fp32"]),
                           "fp32_vs_cpu_fp32": _diff(scores["fp32"], cpu_fp32),
                           "fp16_vs_cpu_fp32": _diff(scores["fp16"], cpu_fp32)}
    return {**out, "fp16_atol": fp16.parity_atol,
            "is_within_atol": out["fp16_vs_cpu_fp32"]["max_abs_diff"] <= fp16.parity_atol,
            "manifest_fp16_parity_max_abs_diff": fp16.parity_max_abs_diff}


def parity_texts(texts: Sequence[str], scorer: Scorer, *, n: int, seed: int = 0) -> list[str]:
    """``n`` of ``texts``: the n/4 longest in tokens (truncated ones first) and random others."""
    lengths = np.array([len(e.ids) for e in scorer.tokenizer.encode_batch(list(texts))])
    longest = np.argsort(-lengths, kind="stable")[:n // 4]
    rest = np.setdiff1d(np.arange(len(texts)), longest)
    others = np.random.default_rng(seed).choice(rest, size=min(len(rest), n - len(longest)),
                                                replace=False)
    return [texts[i] for i in np.sort(np.concatenate([longest, others]))]


def batch_invariance(scorer: Scorer, texts: Sequence[str], *, batch: int) -> float:
    """Max |score difference| of a review scored alone vs in micro-batches of ``batch``."""
    alone = np.array([scorer.score([t]).scores[0] for t in texts])
    batched = np.concatenate([scorer.score(texts[i:i + batch]).scores
                              for i in range(0, len(texts), batch)])
    return float(np.abs(alone - batched).max())


def throughput(scorer: Scorer, texts: Sequence[str], *, batch_max_size: int,
               repeats: int) -> dict[str, Any]:
    """Reviews/s of bench's policies, the wide fixed batches and sorted windows of 512."""
    runs = policies(batch_max_size, fixed_sizes=(*FIXED_SIZES, *WIDE_SIZES))
    runs.update(policies(SORTED_WINDOW, fixed_sizes=()))
    measured = time_raw(scorer, texts, batch_max_size=batch_max_size, repeats=repeats,
                        runs=runs)
    fixed = sorted((k for k in measured if k.startswith("fixed-")),
                   key=lambda k: int(k.split("-")[1]))
    return {k: measured[k] for k in [*fixed, *(k for k in measured if k not in fixed)]}


def speedup(rates: dict[str, Any]) -> dict[str, Any]:
    """The fastest policy and its rate over one review per call."""
    best = max(rates, key=lambda k: rates[k]["reviews_per_s"])
    per_call = rates["fixed-1"]["reviews_per_s"]
    return {"best": best, "best_reviews_per_s": rates[best]["reviews_per_s"],
            "per_call_reviews_per_s": per_call,
            "best_over_per_call": round(rates[best]["reviews_per_s"] / per_call, 2)}


def run_gpu_check(model_dir: Path, *, data: Path = DEFAULT_DATA, n_parity: int = 256,
                  n_timed: int = 2048, repeats: int = 2, batch_max_size: int = 64,
                  allow_cpu: bool = False, intra_op_threads: int = 0) -> dict[str, Any]:
    """Every measurement of the check, as one JSON document."""
    started = time.monotonic()
    ort = import_onnxruntime()
    model_dir = Path(model_dir)
    manifest = _verified(model_dir)
    provider = _provider(ort, allow_cpu=allow_cpu)
    scorers = {v: _scorer(model_dir, v, provider, intra_op_threads) for v in VARIANTS}
    cpu_fp32 = scorers["fp32"] if provider == "cpu" else \
        _scorer(model_dir, "fp32", "cpu", intra_op_threads)
    rows = load_sorted(data)
    texts = [review_text(r.get("title"), r["text"]) for r in rows]
    checked = parity_texts(texts, cpu_fp32, n=n_parity)
    scores = {v: s.score(checked).scores for v, s in scorers.items()}
    reference = cpu_fp32.score(checked).scores
    rates = {v: throughput(s, texts[:n_timed], batch_max_size=batch_max_size, repeats=repeats)
             for v, s in scorers.items()}
    gains = {v: speedup(r) for v, r in rates.items()}
    served = manifest.default_variant["cuda"]
    return {
        "check": "gpu-check", "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {**gpu_info(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "onnxruntime": _ort_info(ort), "provider": provider,
        "model": _model_info(model_dir, manifest, scorers),
        "data": {"file": str(data), "parity_reviews": len(checked),
                 "timed_reviews": len(texts[:n_timed]), "order": "replay (ts, review_id)",
                 "repeats": repeats, "batch_max_size": batch_max_size},
        "parity": _parity(scores, reference, manifest),
        "batch_invariance_max_abs_diff": {
            v: batch_invariance(s, checked, batch=batch_max_size) for v, s in scorers.items()},
        "throughput": rates, "speedup": gains,
        "target": {"best_over_per_call": TARGET_SPEEDUP, "variant": served,
                   "met": gains[served]["best_over_per_call"] >= TARGET_SPEEDUP,
                   "applies": provider == "cuda"},
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def table(report: dict[str, Any]) -> str:
    """The check as a few readable lines."""
    gpus = ", ".join(g["name"] for g in report["machine"]["gpus"]) or "no GPU seen"
    lines = [f"gpu-check on {report['provider']} ({gpus}), model {report['model']['model_id']}"]
    p = report["parity"]
    lines.append(f"fp16 vs fp32 max {p['fp16_vs_fp32']['max_abs_diff']:.2e} mean "
                 f"{p['fp16_vs_fp32']['mean_abs_diff']:.2e} (atol {p['fp16_atol']}) on "
                 f"{report['data']['parity_reviews']} reviews; batch invariance "
                 + ", ".join(f"{v} {x:.1e}" for v, x in
                             report["batch_invariance_max_abs_diff"].items()))
    lines.append(f"{'policy':<22}" + "".join(f"{v + ' rev/s':>14}" for v in report["throughput"]))
    first = next(iter(report["throughput"].values()))
    for name in first:
        lines.append(f"{name:<22}" + "".join(f"{r[name]['reviews_per_s']:>14.1f}"
                                             for r in report["throughput"].values()))
    for v, g in report["speedup"].items():
        lines.append(f"{v}: best {g['best']} = {g['best_over_per_call']}x one review per call")
    t = report["target"]
    lines.append(f"target >= {t['best_over_per_call']}x ({t['variant']}): "
                 + ("met" if t["met"] else "NOT met")
                 + ("" if t["applies"] else " (CPU run: the target is for the GPU)"))
    return "\n".join(lines)


def write(report: dict[str, Any], path: Path) -> None:
    """Write the report as indented JSON, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
