"""fp16 variant for the CUDA provider: the exported fp32 graph, converted.

Optimum refuses an fp16 export on a machine without a GPU, so the fp32 ONNX graph is
converted with onnxconverter-common instead: float initializers and activations become
float16, while the int64 inputs and the fp32 logits stay as they are (``keep_io_types``).
The graph's int64 -> float Casts (the attention mask and the sqrt(head size) scale) stay
fp32 and are cast after: the converter retypes their outputs to float16 but leaves their
``to`` attribute at float, a graph ONNX Runtime refuses to load.

Parity is measured on ONNX Runtime's CPU provider, which runs the fp16 graph (ops without
an fp16 kernel there are computed in fp32 between inserted Casts, so CUDA rounds more):
``trendstream gpu-check`` measures the same comparison, and batch invariance, on the GPU.
If the CPU provider cannot run the graph, no fp16 variant is shipped (the manifest says why).

``trendstream export-fp16 --model DIR`` adds the variant to an exported model directory
without re-training; the directory is republished whole (staging, manifest last, rename).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from onnx import TensorProto
from onnxconverter_common import float16
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from tokenizers import Tokenizer

from export import package
from export.convert import onnx_scores, session
from export.data import read_reviews
from export.errors import ExportError
from export.validate import PARITY_ATOL, Parity, check_parity, parity_rows
from stream.artifact import Manifest, Variant, load_model_dir, publish_model_dir
from stream.batching import INPUT_NAMES, chunks, encode
from stream.errors import StreamError
from stream.inference import load_tokenizer
from stream.settings import REPO_ROOT

log = logging.getLogger(__name__)

DEFAULT_DATA: Final = REPO_ROOT / "data" / "datafiniti-amazon-devices" / "reviews.jsonl.gz"
DEFAULT_MODEL: Final = REPO_ROOT / "models" / "default"
CONVERTER: Final = "onnxconverter-common"
_ORT_ERRORS: Final = (ort_state.Fail, ort_state.InvalidGraph, ort_state.InvalidArgument,
                      ort_state.NotImplemented, ort_state.RuntimeException, ort_state.EPFail)


@dataclass(frozen=True, slots=True)
class Fp16Result:
    """The fp16 variant (None when the CPU provider could not run it) and why."""

    variant: Variant | None
    parity: Parity | None
    size_bytes: int
    reason: str  # the manifest's cuda sentence


def _float_casts(model: onnx.ModelProto) -> list[str]:
    """Names of the Casts to float: kept fp32 (see the module docstring)."""
    return [n.name for n in model.graph.node if n.op_type == "Cast" and any(
        a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)]


def convert_fp16(fp32_path: Path, out_path: Path) -> Path:
    """Write the fp16 graph of ``fp32_path`` (int64 inputs, fp32 logits) to ``out_path``."""
    model = onnx.load(str(fp32_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(model, keep_io_types=True,
                                                     node_block_list=_float_casts(model))
    # e.g. the attention mask's -3.4e38 becomes -1e4: exp() of either is 0 after softmax
    clamped = sum("will be truncated" in str(w.message) for w in caught)
    log.info("fp16 conversion clamped %d float32 constants into fp16's range", clamped)
    onnx.save(converted, str(out_path))
    return out_path


def cpu_error(model_path: Path) -> str | None:
    """Why ONNX Runtime's CPU provider cannot load and run the graph, or None if it can."""
    feeds = {name: np.ones((2, 4), dtype=np.int64) for name in INPUT_NAMES}
    try:
        sess = session(model_path)
        sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})
    except _ORT_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def method(*, reference: str) -> str:
    """The manifest's description of how the variant was made and measured."""
    return (f"{CONVERTER} {metadata.version(CONVERTER)} convert_float_to_float16 of the fp32 "
            f"graph (keep_io_types: int64 inputs, fp32 logits; int64->float Casts kept fp32); "
            f"parity measured on ONNX Runtime's CPU provider vs {reference}; CUDA parity and "
            f"batch invariance: trendstream gpu-check")


def variant(parity: Parity, *, reference: str) -> Variant:
    """The manifest entry; batch invariance is left unmeasured (it is a CUDA property)."""
    return Variant(file=package.FP16_FILE, precision="fp16", method=method(reference=reference),
                   parity_max_abs_diff=parity.max_abs_diff, parity_atol=parity.atol)


def build(fp32_path: Path, out_path: Path, ids: Sequence[Sequence[int]], reference: np.ndarray,
          *, reference_name: str, texts: Sequence[str]) -> Fp16Result:
    """Convert, check on the CPU provider against ``reference`` scores, describe.

    Raises ParityError beyond ``PARITY_ATOL['fp16']``. A graph the CPU provider cannot
    run is deleted and reported in ``reason``: its parity could not be measured here.
    """
    convert_fp16(fp32_path, out_path)
    size = out_path.stat().st_size
    error = cpu_error(out_path)
    if error is not None:
        out_path.unlink()
        log.warning("fp16 variant not shipped: the CPU provider cannot run it (%s)", error)
        return Fp16Result(variant=None, parity=None, size_bytes=size,
                          reason=f"cuda fp32: the fp16 graph did not run on ONNX Runtime's CPU "
                                 f"provider here ({error[:200]}), so its parity was not "
                                 f"measured and it is not shipped")
    parity = check_parity(out_path, ids, reference, atol=PARITY_ATOL["fp16"], texts=texts)
    fp32_size = fp32_path.stat().st_size
    return Fp16Result(
        variant=variant(parity, reference=reference_name), parity=parity, size_bytes=size,
        reason=f"cuda fp16: {size / 1e6:.1f} MB vs fp32 {fp32_size / 1e6:.1f} MB, fp16 "
               f"matmuls; parity max {parity.max_abs_diff:.1e} (mean {parity.mean_abs_diff:.1e})"
               f" vs {reference_name} on the CPU provider; CUDA numbers: trendstream gpu-check")


def parity_texts(data: Path, tokenizer: Tokenizer, *, n: int, seed: int = 0) -> list[str]:
    """``n`` reviews of ``data``: the n/4 longest (truncated) and random others."""
    table = read_reviews([data])
    lengths = np.array([len(e.ids) for e in tokenizer.encode_batch(list(table.text))])
    rows = parity_rows(lengths, n=n, n_long=n // 4, rng=np.random.default_rng(seed))
    return [str(t) for t in table.text[rows]]


def _link_or_copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)  # same file system (staging sits beside the target): no copy
    except OSError:
        shutil.copy2(source, dest)


def _with_fp16(manifest: Manifest, result: Fp16Result) -> dict[str, Any]:
    """The manifest (minus files and format version) with the fp16 variant and cuda default."""
    fields = manifest.model_dump(exclude={"files", "format_version"})
    variants = {k: v for k, v in manifest.variants.items() if k != "fp16"}
    if result.variant is not None:
        variants["fp16"] = result.variant
    cpu_reason, _, _ = manifest.default_variant_reason.partition(". cuda ")
    fields.update(variants=variants,
                  default_variant={**manifest.default_variant,
                                   "cuda": "fp16" if result.variant is not None else "fp32"},
                  default_variant_reason=f"{cpu_reason}. {result.reason}",
                  versions={**manifest.versions, CONVERTER: metadata.version(CONVERTER)})
    return fields


def add_fp16(model_dir: Path, *, data: Path = DEFAULT_DATA, n_reviews: int = 256,
             seed: int = 0) -> tuple[Manifest, Fp16Result]:
    """Add (or rebuild) the fp16 variant of an exported model directory, parity vs its fp32.

    Every listed file is verified first, so the new checksums bless nothing corrupt; the
    directory is then rebuilt in a staging directory (hard links, the new file, the
    manifest last) and renamed into place.
    """
    manifest = load_model_dir(model_dir)
    fp32_file = manifest.variants["fp32"].file
    old_fp16 = manifest.variants["fp16"].file if "fp16" in manifest.variants else None
    staging = package.staging_dir(model_dir)
    try:
        for rel in manifest.files:
            if rel != old_fp16:  # never a link: the new graph is written in its place
                _link_or_copy(model_dir / rel, staging / rel)
        tokenizer = load_tokenizer(staging / manifest.tokenizer_file,
                                   max_length=manifest.max_length)
        texts = parity_texts(data, tokenizer, n=n_reviews, seed=seed)
        ids = encode(tokenizer, texts, max_length=manifest.max_length)
        fp32 = staging / fp32_file
        reference = onnx_scores(session(fp32), ids, chunks(ids))
        fp32_parity = manifest.variants["fp32"].parity_max_abs_diff
        result = build(fp32, staging / package.FP16_FILE, ids, reference, texts=texts,
                       reference_name=f"the fp32 graph ({fp32_file}, itself within "
                                      f"{fp32_parity:.1e} of PyTorch) on {len(texts)} reviews")
        published = publish_model_dir(staging, model_dir, _with_fp16(manifest, result))
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once published
    return published, result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trendstream export-fp16",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, metavar="DIR",
                   help="exported model directory to add model.fp16.onnx to (default "
                        "%(default)s)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="FILE",
                   help="review file of the parity set (default %(default)s)")
    p.add_argument("--reviews", type=int, default=256,
                   help="parity reviews: the quarter longest and random others (default "
                        "%(default)s)")
    return p


def main(argv: list[str]) -> int:
    """Add the fp16 variant, print what was measured; 0 on success, 1 on a failed check."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        logging.getLogger("export").setLevel(logging.INFO)
    try:
        manifest, result = add_fp16(args.model, data=args.data, n_reviews=args.reviews)
    except (ExportError, StreamError) as exc:
        log.error("export-fp16 failed: %s", exc)
        return 1
    print(f"model {manifest.model_id} -> {args.model}")
    print(f"default variant cpu={manifest.default_variant['cpu']} "
          f"cuda={manifest.default_variant['cuda']}")
    print(result.reason)
    return 0 if result.variant is not None else 1
