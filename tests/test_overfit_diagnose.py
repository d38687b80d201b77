"""``benchmarks/overfit_diagnose.py``: a harmonic-family overfit check's last network,
clustered each way, with every true object's Dice and embedding error."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchbio.datasets.synthetic import OVERFIT_CHECK
from benchbio.options import parse_assignments
from benchbio.registry import DATASETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import overfit_diagnose  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = {"tissue": 0.3, "size": 32}


def test_options_on_the_command_line_are_values_or_strings():
    # the diagnosis parses --set as `benchbio run --set` does
    assert parse_assignments(["sinconv_norm=false", "width=8", "guide_band=full"], "--set") \
        == {"sinconv_norm": False, "width": 8, "guide_band": "full"}


def test_best_dice_finds_the_best_overlapping_label():
    mask = np.zeros((4, 4), bool)
    mask[:2] = True                          # 8 pixels
    labels = np.zeros((4, 4), int)
    labels[0] = 1                            # 4 of them: Dice 8/12
    labels[1:3] = 2                          # 4 of them and 4 others: Dice 8/16
    dice, which = overfit_diagnose._best_dice(mask, labels)
    assert which == 1 and dice == pytest.approx(8 / 12)
    assert overfit_diagnose._best_dice(mask, np.zeros((4, 4), int)) == (0.0, 0)


def test_the_report_scores_each_clustering_and_every_true_object():
    check = replace(OVERFIT_CHECK, dataset_options=TINY, steps=2, eval_every=2,
                    options={"width": 4, "kernel_size": 3, "n_guides": 4, "search_steps": 5})
    evals = []
    lines = overfit_diagnose.diagnose("harmonic", check, on_eval=lambda *a: evals.append(a))
    assert [e[0] for e in evals] == [2]  # ran its budget, no early stop
    truth = np.asarray(DATASETS.create("synthetic-cells", n_train=1, n_val=1, n_test=1,
                                       **TINY).split("train")[0].instances)
    n_true = len(np.unique(truth)) - 1
    assert lines[0].startswith("harmonic:") and "own clustering torch gaussian" in lines[0]
    scores = {}
    for name in ("flat", "gaussian", "sklearn"):
        line = next(x for x in lines if x.startswith(f"  {name}:"))
        scores[name] = float(re.search(r"sbd (\d\.\d+)", line).group(1))
        assert 0.0 <= scores[name] <= 1.0 and f"for {n_true} true" in line
    # its own clustering (harmonic's gaussian kernel) re-scores what the check scored
    assert scores["gaussian"] == pytest.approx(evals[-1][1], abs=5e-4)
    objects = [x for x in lines if x.startswith("  object ")]
    assert len(objects) == n_true
    assert any(x.startswith("  median embedding error") for x in lines)
