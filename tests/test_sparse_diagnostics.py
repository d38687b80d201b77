"""The sparse regime's diagnostics: ``benchmarks/rescore.py`` (a run's best checkpoint
re-scored with changed clustering) and ``benchmarks/harmonic_targets_check.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_untrained_harmonic

from benchbio.guides import Guides
from benchbio.registry import DATASETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harmonic_targets_check  # noqa: E402
import rescore  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DATASET_OPTIONS = {"size": 32, "n_train": 1, "n_val": 1, "n_test": 2, "sparse": True}


@pytest.fixture
def best_pt(tmp_path) -> Path:
    """``artifacts/checkpoint/best.pt`` and ``artifacts/config.json`` as a run logs them,
    for an untrained tiny harmonic model on tiny sparse synthetic cells."""
    method, model = tiny_untrained_harmonic(32.0, 1)
    artifacts = tmp_path / "artifacts"
    (artifacts / "checkpoint").mkdir(parents=True)
    (artifacts / "config.json").write_text(json.dumps(
        {"dataset": "synthetic-cells", "dataset_options": {**DATASET_OPTIONS, "data_dir": None}}))
    path = artifacts / "checkpoint" / "best.pt"
    torch.save({"method": "harmonic", "method_options": method.options(), "in_channels": 1,
                "min_area": 4, "fg_at_test": False, "model": model.state_dict(),
                "method_state": method.state()}, path)
    return path


def test_an_override_reaches_the_clustering(best_pt):
    samples = list(DATASETS.create("synthetic-cells", **DATASET_OPTIONS).split("test"))
    objects = np.mean([s.instances.max() for s in samples])
    # the untrained network's embedding is one blob at eps 0.5: background, no instance
    as_run = rescore.rescore(str(best_pt), {}, samples)
    assert set(as_run) == set(rescore.KEYS)
    assert as_run["sbd"] == 0.0 and as_run["dic"] == pytest.approx(-objects)
    # a bandwidth far below the embedding's spread splits it into many instances
    narrow = rescore.rescore(str(best_pt), {"eps": 0.05}, samples)
    assert narrow["dic"] > 10 and narrow["fg_bg_dice"] > 0


def test_main_prints_one_row_per_variant(best_pt, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["rescore.py", str(best_pt), "--set", "eps=0.7",
                                      "--set", "cluster_kernel=gaussian,eps=0.6"])
    rescore.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| options", "| (run)", "| eps=0.7", "| cluster_kernel=gaussian,eps=0.6"]


def test_targets_check_counts_every_object_and_scores_each_noise_and_bandwidth(
        tmp_path, monkeypatch, capsys):
    guides = Guides(np.array([[9.0, 0.0, 0.1], [0.0, 9.0, 0.3], [-7.0, 0.0, 0.5],
                              [0.0, -7.0, 0.7]]), 32.0, 32.0)
    path = tmp_path / "guides.json"
    path.write_text(json.dumps({**guides.to_json(), "search": {}}))  # a run's guides.json
    options = [f"--data-opt={k}={v}" for k, v in DATASET_OPTIONS.items()]
    monkeypatch.setattr(sys, "argv", ["harmonic_targets_check.py", str(path), *options,
                                      "--noise", "0", "0.1", "--eps", "0.5"])
    harmonic_targets_check.main()
    out = capsys.readouterr().out
    samples = DATASETS.create("synthetic-cells", **DATASET_OPTIONS).split("test")
    assert f"({sum(int(s.instances.max()) for s in samples)} objects)" in out
    assert [r.split(" | ")[:2] for r in out.splitlines() if r.startswith("| 0")] == [
        ["| 0.0", "0.5"], ["| 0.1", "0.5"]]
