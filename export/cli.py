"""``trendstream export``: build, check and publish a model directory."""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

from pydantic import ValidationError
from torch.jit import TracerWarning
from transformers.utils import logging as hf_logging

from export.errors import ExportError
from export.pipeline import DEFAULT_DATA, DEFAULT_OUT, ExportOptions, ExportResult, run_export
from export.train import TrainConfig

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    defaults, budget = ExportOptions(), TrainConfig()
    p = argparse.ArgumentParser(prog="trendstream export", description=__doc__)
    p.add_argument("--data", type=Path, action="append", metavar="FILE",
                   help=f"review file, .jsonl or .jsonl.gz, repeatable (default {DEFAULT_DATA})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help="model directory to publish (default %(default)s)")
    p.add_argument("--horizon-days", type=int, default=defaults.horizon_days,
                   help="label window H in days (default %(default)s)")
    p.add_argument("--observation-end", choices=("product", "source"),
                   default=defaults.observation_end,
                   help="span end: each product's last review (crawled sets) or each source's "
                        "(live feeds) (default %(default)s)")
    p.add_argument("--max-train-examples", type=int, default=budget.max_train_examples,
                   help="balanced training sample, passed over once per epoch (default "
                        "%(default)s)")
    p.add_argument("--max-eval-examples", type=int, default=budget.max_eval_examples,
                   help="random sample of the validation and of the test split (default "
                        "%(default)s)")
    p.add_argument("--max-epochs", type=int, default=budget.max_epochs,
                   help="(default %(default)s)")
    p.add_argument("--max-seconds", type=float, default=budget.max_seconds,
                   help="safety net on the training time after the encoding (default %(default)s)")
    p.add_argument("--max-length", type=int, default=defaults.max_length,
                   help="tokens per review, [CLS] and [SEP] included (default %(default)s)")
    p.add_argument("--seed", type=int, default=budget.seed, help="(default %(default)s)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny random-init BERT instead of the pretrained weights (tests)")
    p.add_argument("--detector", choices=("fit", "defaults"), default=defaults.detector,
                   help="fit the product-level detector on the data, or ship the plain "
                        "momentum defaults (default %(default)s)")
    return p


def _options(args: argparse.Namespace) -> ExportOptions:
    config = TrainConfig(max_train_examples=args.max_train_examples,
                         max_eval_examples=args.max_eval_examples, max_epochs=args.max_epochs,
                         max_seconds=args.max_seconds, seed=args.seed)
    return ExportOptions(data=args.data or [DEFAULT_DATA], out=args.out,
                         horizon_days=args.horizon_days, observation_end=args.observation_end,
                         max_length=args.max_length, tiny=args.tiny, train=config,
                         detector=args.detector)


def summary(result: ExportResult) -> str:
    """A few lines for the terminal: where, how good, how faithful, how long."""
    m = result.manifest
    lines = [f"model {m.model_id} -> {result.model_dir}",
             f"default variant cpu={m.default_variant['cpu']} cuda={m.default_variant['cuda']}"]
    d = m.detector
    lines.append(f"detector {d.version}: weights {d.weights} fall<={d.fall_enter_ratio} "
                 f"rise>={d.rise_enter_ratio} sharp-drop>={d.sharp_drop_fall}")
    for split, x in m.metrics.items():
        auc = "n/a" if x.roc_auc is None else f"{x.roc_auc:.3f}"
        lines.append(f"{split:<10} n={x.n} roc_auc={auc} accuracy={x.accuracy:.3f} "
                     f"prior_accuracy={x.prior_accuracy:.3f} brier={x.brier:.3f} "
                     f"positive_rate={x.positive_rate:.3f}")
    for name, v in m.variants.items():
        invariance = "n/a (CUDA: gpu-check)" if v.batch_invariance_max_abs_diff is None \
            else f"{v.batch_invariance_max_abs_diff:.2e}"
        lines.append(f"{name:<5} {v.file} {result.sizes_bytes[v.file] / 1e6:.1f} MB "
                     f"parity max={v.parity_max_abs_diff:.2e} "
                     f"mean={result.parity[name].mean_abs_diff:.2e} (atol {v.parity_atol}) "
                     f"batch_invariance={invariance}")
    lines.append(f"int8-dynamic (reference, not shipped) batch_invariance="
                 f"{result.batch_invariance['int8-dynamic']:.2e}")
    lines.append("timings_s " + " ".join(f"{k}={v}" for k, v in result.timings_s.items()))
    return "\n".join(lines)


def _quiet_known_noise() -> None:
    """Silence library messages that are expected here and only alarm a user.

    "Some weights ... newly initialized" (the head is what we train), optimum's
    accelerate hint and transformers' torch_dtype deprecation, and the tracer's
    constant-folding warnings of the TorchScript ONNX export.
    """
    hf_logging.set_verbosity_error()
    logging.getLogger("optimum").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=TracerWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(optimum|torch)\.")


def main(argv: list[str]) -> int:
    """Parse ``argv``, run the export, print a summary; 0 on success, 1 on a failed check."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:  # run directly, not through a configured entry point
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s "
                                                          "%(name)s %(message)s")
        logging.getLogger("export").setLevel(logging.INFO)  # not ORT's per-tensor INFO lines
    _quiet_known_noise()
    try:
        result = run_export(_options(args))
    except (ExportError, ValidationError) as exc:
        log.error("export failed: %s", exc)
        return 1
    print(summary(result))
    return 0
