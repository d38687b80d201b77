"""Every method of issue #5 runs end to end through ``benchbio run`` (tiny settings)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from benchbio.cli import main

GUIDED = ["harmonic-coordconv", "harmonic-noguide", "harmonic-random", "harmonic-low",
          "harmonic-high", "discriminative", "discriminative-sinconv"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [*GUIDED, "embedseg"])
def test_benchbio_run(name):
    sets = ["--set", "width=4"]
    if name in GUIDED:
        sets += ["--set", "search_steps=5"]
    data = [f"--data-opt={kv}" for kv in ("n_train=2", "n_val=1", "n_test=1", "size=32")]
    args = ["run", "--method", name, "--dataset", "synthetic-cells", "--epochs", "1",
            "--batch-size", "2", "--crop-size", "32", "--device", "cpu", "--no-track",
            *sets, *data]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "sbd" in result.output
