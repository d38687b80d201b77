"""Every registered method runs end to end through ``benchbio run`` (tiny settings)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import tiny_options

from benchbio import METHODS, create_method
from benchbio.cli import main
from benchbio.registry import DATASETS


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS.names())
def test_benchbio_run(name):
    sets = [f"--set={k}={v}" for k, v in tiny_options(create_method(name).Options).items()]
    data = [f"--data-opt={k}={v}"
            for k, v in tiny_options(DATASETS.options_type("synthetic-cells")).items()]
    args = ["run", "--method", name, "--dataset", "synthetic-cells", "--epochs", "1",
            "--batch-size", "2", "--crop-size", "32", "--device", "cpu", "--no-track",
            *sets, *data]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "sbd" in result.output
