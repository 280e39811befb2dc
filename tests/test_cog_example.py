"""The example Cog model in examples/cog, served by a real Cog server through the launcher."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from cog_predictors.client import Tally, decode_data_url, free_ports, log_tail, predict
from PIL import Image

from safeinfer.errors import LaunchError
from safeinfer.launch import Launcher
from safeinfer.png import read_metadata, verify_png

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cog"
#: Seconds the example gets to become ready: its setup imports torch and diffusers.
EXAMPLE_READY_TIMEOUT = 180.0
#: Few steps keep the test short; the image still depends on the seed.
STEPS = 2


def test_example_serves_seeded_digits(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with open(log_path, "w", buffering=1) as log:
        launcher = Launcher(
            [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
            workers=1,
            ports=free_ports(1),
            run_dir=tmp_path / "run",
            health="http://127.0.0.1:{port}/health-check",
            health_timeout=EXAMPLE_READY_TIMEOUT,
            max_restarts=0,
            env={**os.environ, "COG_PREDICT_TYPE_STUB": "predict.py:Runner"},
            cwd=EXAMPLE,
            log_stream=log,
        )
        try:
            launcher.start(timeout=EXAMPLE_READY_TIMEOUT)
        except LaunchError as error:
            pytest.fail(f"the example did not start: {error}\n{log_tail(log_path)}")
        try:
            url = launcher.urls()[0]
            tally = Tally()
            inputs = {"prompt": "a handwritten three", "steps": STEPS}
            first = predict(url, {**inputs, "seed": 3}, tally)
            again = predict(url, {**inputs, "seed": 3}, tally)
            other = predict(url, {**inputs, "seed": 4}, tally)
        finally:
            launcher.stop()
    context = log_tail(log_path)

    for document in (first, again, other):
        assert document["status"] == "succeeded", f"{document}\n{context}"
    images = {}
    for label, document in (("first", first), ("again", again), ("other", other)):
        mime, data = decode_data_url(document["output"])
        assert mime == "image/png", context
        assert verify_png(data, level="full").ok, context
        images[label] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    metadata = read_metadata(decode_data_url(first["output"])[1])["safeinfer"]

    assert metadata["seed"] == 3
    assert metadata["prompt"] == "a handwritten three"
    assert metadata["model"] == "tiny-digits"
    assert metadata["steps"] == STEPS
    assert np.array_equal(images["first"], images["again"])
    assert not np.array_equal(images["first"], images["other"])
