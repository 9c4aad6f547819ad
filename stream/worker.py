"""Start one worker process: check everything that can fail fast, then run faust."""

from __future__ import annotations

import asyncio
import logging

import faust
from aiokafka.errors import KafkaError

from stream.alerthooks import AlertHooks
from stream.app import Pipeline, build_app
from stream.errors import StreamError
from stream.inference import Scorer
from stream.settings import Settings
from stream.topics import ensure_topics, seed_offsets
from stream.trends import detector_params

log = logging.getLogger(__name__)

BROKER_TIMEOUT_S = 60.0


def make_pipeline(settings: Settings) -> Pipeline:
    """Load and warm the model (a missing or corrupt model fails here, before Kafka)."""
    scorer = Scorer.from_settings(settings)
    params = detector_params(scorer.manifest.detector, settings)
    scorer.score(["warm-up review: works great, would buy again."] * 2)
    pipeline = Pipeline(settings=settings, scorer=scorer, params=params,
                        hooks=AlertHooks.from_settings(settings))
    pipeline.is_warm = True
    return pipeline


async def _prepare_kafka(settings: Settings) -> None:
    await ensure_topics(settings)
    await seed_offsets(settings)


def run_worker(settings: Settings, *, naive_scoring: bool = False) -> None:
    """Run until SIGTERM/SIGINT; faust drains the agents and commits on the way out.

    ``naive_scoring``: the per-review baseline of ``trendstream bench``, never for production.
    """
    pipeline = make_pipeline(settings)
    try:
        asyncio.run(asyncio.wait_for(_prepare_kafka(settings), timeout=BROKER_TIMEOUT_S))
    except (KafkaError, OSError, TimeoutError) as exc:
        msg = (f"cannot reach Kafka at {settings.kafka_bootstrap} ({type(exc).__name__}: "
               f"{exc}; the worker waits at most {BROKER_TIMEOUT_S:.0f} s): check "
               "TRENDSTREAM_KAFKA_BOOTSTRAP and that the broker is up")
        raise StreamError(msg) from exc
    app = build_app(pipeline, naive_scoring=naive_scoring)
    log.info("worker starting bootstrap=%s app_id=%s partitions=%d model_id=%s provider=%s "
             "variant=%s", settings.kafka_bootstrap, settings.app_id, settings.partitions,
             pipeline.scorer.model_id, pipeline.scorer.provider,
             pipeline.scorer.variant.precision)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
