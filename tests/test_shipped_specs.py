"""Every study spec shipped under results/ loads and plans: its methods, datasets,
options and metric keys exist in this version of benchbio."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchbio.sweep import load_spec, plan_cells

SPECS = sorted((Path(__file__).resolve().parents[1] / "results").glob("*/spec.toml"))


def test_the_time_to_accuracy_studies_are_shipped():
    names = {p.parent.name for p in SPECS}
    assert {"time-to-accuracy", "time-to-accuracy-long"} <= names


@pytest.mark.parametrize("path", SPECS, ids=[p.parent.name for p in SPECS])
def test_shipped_spec_loads_and_plans(path):
    spec = load_spec(path)
    cells = plan_cells(spec)
    assert len(cells) == len(spec.methods) * len(spec.datasets) * len(spec.seeds)
