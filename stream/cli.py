"""``trendstream`` command line: worker, replay, score, export, demo, backtest, settings.

Settings come from the environment once, here, and are passed down. ``export`` is
imported only when asked for: the runtime never imports torch.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from aiokafka.errors import KafkaConnectionError

from stream.errors import StreamError
from stream.settings import Settings, load_settings

log = logging.getLogger("trendstream")


def _iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        msg = f"{value!r} has no UTC offset (write e.g. 2017-01-01T00:00:00Z)"
        raise argparse.ArgumentTypeError(msg)
    return parsed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trendstream", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run the faust worker (settings from TRENDSTREAM_*)")
    w.add_argument("--naive-scoring", action="store_true",
                   help="score one review per model call: the baseline `trendstream bench` "
                   "measures the worker against (not for production)")
    r = sub.add_parser("replay", help="produce a review file into the reviews topic")
    r.add_argument("file", type=Path)
    r.add_argument("--speed", type=float, default=None,
                   help="event-time seconds per wall second (default: as fast as possible)")
    r.add_argument("--since", type=_iso, help="first event time to send (inclusive)")
    r.add_argument("--until", type=_iso, help="event time to stop before (exclusive)")
    r.add_argument("--malformed", type=int, default=0, help="splice in N malformed events")
    s = sub.add_parser("score", help="score a review file offline with the worker's scorer")
    s.add_argument("--model", type=Path, default=None, help="model directory")
    s.add_argument("--input", type=Path, required=True)
    s.add_argument("--output", type=Path, required=True)
    e = sub.add_parser("export", help="fine-tune and export a model (needs the export extra)",
                       add_help=False)
    e.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("eval", help="per-review evaluation of the model and baselines (needs the "
                   "export extra; `trendstream eval --help`)", add_help=False)
    d = sub.add_parser("demo", help="the main job on bundled data (see `make demo`)")
    d.add_argument("--data", type=Path, default=None)
    d.add_argument("--out", type=Path, default=Path("out/demo"))
    d.add_argument("--malformed", type=int, default=7)
    d.add_argument("--keep-topics", action="store_true")
    b = sub.add_parser("backtest", help="replay a review or sales file through the trend code "
                       "(no Kafka) and score every call against what followed")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="review file (.jsonl or .jsonl.gz)")
    src.add_argument("--sales", type=Path, help="daily sales CSV: product_id,date,units[,...]")
    b.add_argument("--model", type=Path, default=None, help="model directory (review files)")
    b.add_argument("--out", type=Path, required=True, help="output directory")
    b.add_argument("--observation-end", choices=("product", "source"), default="product",
                   help="end of a product's observed span: its last review (crawled sets) or "
                        "its source's (live feeds) (default %(default)s)")
    b.add_argument("--span-quantile", type=float, default=0.99,
                   help="sales: the observed span ends on the day by which this share of all "
                        "units had sold (extract tails are thin) (default %(default)s)")
    b.add_argument("--plots", type=int, default=20,
                   help="PNG plots for the N products with most events (default %(default)s)")
    b.add_argument("--no-sweep", action="store_true", help="skip the threshold sweep")
    b.add_argument("--score-from", type=_iso, default=None,
                   help="score only calls from this time on (default: the model's held-out "
                        "test start when the file is its training data, else every call)")
    n = sub.add_parser("bench", help="throughput of the raw scorer policies and the "
                       "aggregation step (writes JSON)")
    n.add_argument("--reviews", type=int, default=2000, help="reviews timed (default %(default)s)")
    n.add_argument("--repeats", type=int, default=3, help="passes per raw policy, best kept "
                   "(default %(default)s)")
    n.add_argument("--full", action="store_true", help="8,000 reviews, 5 passes")
    n.add_argument("--out", type=Path, default=Path("out/bench/bench.json"))
    n.add_argument("--no-kafka", action="store_true",
                   help="only the parts that need no broker (raw policies, pure aggregation)")
    n.add_argument("--products", type=int, default=0, help="also measure the worker's memory "
                   "holding this many products' window state (issue target: 1000000)")
    n.add_argument("--broker-pid-file", type=Path, default=None,
                   help="pid file of the local broker, to report its CPU seconds")
    g = sub.add_parser("gpu-check", help="fp16/fp32 parity and raw batch-policy throughput on "
                       "the CUDA provider (writes JSON; stream/gpucheck.py)")
    g.add_argument("--model", type=Path, default=None, help="model directory with the fp16 "
                   "variant (the export writes it; older ones: `trendstream export-fp16`)")
    g.add_argument("--out", type=Path, default=Path("out/gpu/gpu-check.json"))
    g.add_argument("--data", type=Path, default=None, help="review file (default: the bundled "
                   "Datafiniti set)")
    g.add_argument("--reviews", type=int, default=2048, help="reviews timed per policy "
                   "(default %(default)s)")
    g.add_argument("--parity-reviews", type=int, default=256, help="(default %(default)s)")
    g.add_argument("--repeats", type=int, default=2, help="passes per policy, best kept")
    g.add_argument("--allow-cpu", action="store_true", help="run on the CPU provider when "
                   "CUDA is not offered (tests the check itself; same JSON keys)")
    sub.add_parser("export-fp16", help="add the fp16 variant to an exported model directory "
                   "(needs the export extra; `trendstream export-fp16 --help`)", add_help=False)
    c = sub.add_parser("chaos", help="kill, restart, rebalance and starve real workers on a "
                       "real broker; compare with an undisturbed run (writes JSON)")
    c.add_argument("--reviews", type=int, default=20_000, help="reviews replayed per scenario "
                   "(default %(default)s)")
    c.add_argument("--data", type=Path, default=None, help="review file (default: the bundled "
                   "Datafiniti set)")
    c.add_argument("--seed", type=int, default=11)
    c.add_argument("--only", action="append", default=None, help="run only this scenario "
                   "(repeatable; the reference always runs)")
    c.add_argument("--model", type=Path, default=None, help="model directory (default: a "
                   "small model built once under --out)")
    c.add_argument("--out", type=Path, default=Path("out/chaos"))
    q = sub.add_parser("dlq", help="the dead-letter topic: `dlq summary`, `dlq redrive`")
    qs = q.add_subparsers(dest="dlq_command", required=True)
    qs.add_parser("summary", help="counts by reason and stage (JSON)")
    qr = qs.add_parser("redrive", help="re-publish chosen dead letters' original records to "
                       "their topics (reviews; trend-alerts for alerts no webhook took), "
                       "after a fix (stream/dlq.py)")
    qr.add_argument("--reason", action="append", default=[], help="only this reason "
                    "(repeatable)")
    qr.add_argument("--review-id", action="append", default=[], help="only this review_id "
                    "(repeatable; known for aggregate-stage letters)")
    qr.add_argument("--since", type=_iso, help="dead-lettered at or after this time")
    qr.add_argument("--until", type=_iso, help="dead-lettered before this time")
    qr.add_argument("--dry-run", action="store_true", help="count only, send nothing")
    t = sub.add_parser("settings", help="print the settings (or the README table)")
    t.add_argument("--markdown", action="store_true")
    j = sub.add_parser("schemas", help="write the JSON Schemas of the events, generated from "
                       "the code (README, \"Event contracts\")")
    j.add_argument("--out", type=Path, default=Path("schemas"), help="(default %(default)s)")
    j.add_argument("--check", action="store_true", help="write nothing; exit 1 when the "
                   "files there differ from what the code generates")
    a = sub.add_parser("acls", help="print the kafka-acls.sh commands that grant the worker's "
                       "principal what it needs (README, \"Event contracts\")")
    a.add_argument("--principal", default="User:trendstream", help="(default %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trendstream`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        from export.cli import main as export_main  # heavy: torch, transformers, optimum
        return export_main(argv[1:])
    if argv[:1] == ["eval"]:
        from export.evaluate import main as eval_main  # heavy: torch, scikit-learn
        return eval_main(argv[1:])
    if argv[:1] == ["export-fp16"]:
        from export.fp16 import main as fp16_main  # onnx, onnxconverter-common
        return fp16_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(level=settings.log_level,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        return _dispatch(args, settings)
    except StreamError as exc:
        print(f"trendstream: error: {exc}", file=sys.stderr)
        return 2
    except KafkaConnectionError as exc:  # the tools (replay, dlq, ...) as the worker does
        print(f"trendstream: error: cannot reach Kafka at {settings.kafka_bootstrap} ({exc}): "
              "check TRENDSTREAM_KAFKA_BOOTSTRAP and that the broker is up", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "worker":
        from stream.worker import run_worker
        run_worker(settings, naive_scoring=args.naive_scoring)
        return 0
    if args.command == "replay":
        from stream.replay import replay
        from stream.topics import ensure_topics
        asyncio.run(ensure_topics(settings))
        report = asyncio.run(replay(settings, args.file, speed=args.speed, since=args.since,
                                    until=args.until, malformed=args.malformed))
        print(json.dumps(dataclasses.asdict(report)))
        return 0
    if args.command == "score":
        from stream.batchscore import score_file
        counts = score_file(args.input, args.output, model_dir=args.model or settings.model_dir,
                            settings=settings)
        print(json.dumps(counts))
        return 0
    if args.command == "demo":
        from stream.demo import run_demo
        return run_demo(settings, data=args.data, out=args.out, malformed=args.malformed,
                        keep_topics=args.keep_topics)
    if args.command == "backtest":
        return _backtest(args, settings)
    if args.command == "bench":
        from stream.bench import run_bench, table, write
        pid = int(args.broker_pid_file.read_text()) if args.broker_pid_file else None
        report = run_bench(settings, n_reviews=8000 if args.full else args.reviews,
                           repeats=5 if args.full else args.repeats, kafka=not args.no_kafka,
                           broker_pid=pid, products=args.products,
                           log_dir=args.out.parent / "logs")
        write(report, args.out)
        print(table(report))
        print(f"wrote {args.out}")
        return 0
    if args.command == "gpu-check":
        return _gpu_check(args, settings)
    if args.command == "chaos":
        from stream.chaos import DEFAULT_DATA, run_chaos, table, write
        summary = asyncio.run(run_chaos(settings, out=args.out, data=args.data or DEFAULT_DATA,
                                        n_reviews=args.reviews, seed=args.seed, only=args.only,
                                        model=args.model))
        write(summary, args.out / "chaos.json")
        print(table(summary))
        print(f"wrote {args.out / 'chaos.json'}")
        return 0 if summary["all_passed"] else 1
    if args.command == "dlq":
        from stream import dlq
        if args.dlq_command == "summary":
            print(json.dumps(asyncio.run(dlq.summary(settings))))
            return 0
        selection = dlq.Selection(reasons=frozenset(args.reason), since=args.since,
                                  until=args.until, review_ids=frozenset(args.review_id))
        report = asyncio.run(dlq.redrive(settings, selection, dry_run=args.dry_run))
        print(json.dumps(report.as_dict()))
        return 0
    if args.command == "settings":
        from stream.settingsdoc import describe
        print(describe(settings, markdown=args.markdown))
        return 0
    if args.command == "schemas":
        return _schemas(args.out, check=args.check)
    if args.command == "acls":
        from stream.acls import worker_acls
        for acl in worker_acls(settings):
            print(f"# {acl.why}\n{acl.command(args.principal)}")
        return 0
    raise AssertionError(args.command)


def _schemas(out: Path, *, check: bool) -> int:
    from stream import contracts

    if not check:
        for path in contracts.write_all(out):
            print(f"wrote {path}")
        return 0
    if problems := contracts.differences(out):
        print("\n".join(problems) + f"\nrun: trendstream schemas --out {out}", file=sys.stderr)
        return 1
    print(f"{out}: {len(contracts.contracts())} schemas up to date")
    return 0


def _gpu_check(args: argparse.Namespace, settings: Settings) -> int:
    from stream.gpucheck import DEFAULT_DATA, run_gpu_check, table, write

    report = run_gpu_check(args.model or settings.model_dir, data=args.data or DEFAULT_DATA,
                           n_parity=args.parity_reviews, n_timed=args.reviews,
                           repeats=args.repeats, batch_max_size=settings.batch_max_size,
                           allow_cpu=args.allow_cpu,
                           intra_op_threads=settings.ort_intra_op_threads)
    write(report, args.out)
    print(table(report))
    print(f"wrote {args.out}")
    return 0


def _backtest(args: argparse.Namespace, settings: Settings) -> int:
    from stream import backtestio

    if args.data is not None:
        inputs = backtestio.review_inputs(args.data, settings,
                                          model_dir=args.model or settings.model_dir,
                                          observation_end=args.observation_end,
                                          score_from=args.score_from)
    else:
        inputs = backtestio.sales_inputs(args.sales, settings,
                                         min_units=settings.min_reviews or 20,
                                         span_quantile=args.span_quantile)
    result = backtestio.run_methods(inputs, settings, sweep=not args.no_sweep)
    card = backtestio.write_outputs(inputs, result, args.out, plots=args.plots)
    print(backtestio.summary_table(card))
    print(f"wrote {args.out}/scorecard.json, calls.jsonl" +
          (", plots/, index.html" if args.plots else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
