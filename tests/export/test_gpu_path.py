"""The CUDA scoring path, exercised on the CPU provider: IO binding."""

from pathlib import Path

import numpy as np
import pytest

from stream.batching import pad
from stream.inference import Scorer

pytestmark = pytest.mark.export

TEXTS = ["Great tablet, the battery lasts for days.", "bad", "Stopped charging after a week "
         "and support never answered my emails, so I returned it. " * 6, "ok for the price"]


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_io_binding_equals_session_run(tiny_model_dir: Path, variant: str) -> None:
    """The IO-bound run (CUDA's path) returns session.run's logits bit for bit on the CPU."""
    scorer = Scorer(tiny_model_dir, variant=variant, provider="cpu")
    feeds = pad(scorer.encode(TEXTS))
    inputs = {i.name: feeds[i.name] for i in scorer.session.get_inputs()}
    bound = scorer._run_bound(inputs, device="cpu")
    plain = scorer.session.run(None, inputs)[0]
    assert bound.dtype == np.float32 and bound.shape == (len(TEXTS), 1)
    assert np.array_equal(bound, plain)

