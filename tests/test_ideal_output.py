"""``Method.ideal_output`` and the ceiling tool built on it
(``benchmarks/overfit_target_ceiling.py``): a perfect network's output, post-processed, is
what learning the targets reaches on the overfit check (results/bench/overfit.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchbio import create_method
from benchbio.data import Sample
from benchbio.datasets.synthetic import make_cells
from benchbio.method import Method, saturated_logit
from benchbio.training import _metric_of, evaluate_samples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import overfit_target_ceiling  # noqa: E402


def test_saturated_logit_is_certain_on_both_sides():
    logit = saturated_logit(np.array([[0, 1], [255, 1]], np.uint8))
    assert logit.dtype == torch.float32
    assert torch.equal(torch.sigmoid(logit) > 0.999, torch.tensor([[False, True], [False, True]]))
    assert (torch.sigmoid(logit[0, 0]) < 0.001).item()


def test_base_method_defines_no_ideal_output():
    assert Method().ideal_output(np.zeros((4, 4), np.int64), None) is None


@pytest.mark.parametrize("name, options", [
    ("harmonic", {}), ("harmonic", {"background": "head"}),
    ("patchperpix", {"patch_size": 5, "head": "fg"}),
    ("patchperpix", {"patch_size": 5, "head": "count"})])
def test_ideal_output_has_the_networks_channels_and_clusters_perfectly(name, options):
    image, instances = make_cells(0, size=48)
    sample = Sample("s0", image, instances)
    method = create_method(name, width=8, search_steps=20, **options) if name == "harmonic" \
        else create_method(name, width=8, **options)
    method.fit([sample], seed=0)
    net = method.build_model(image.shape[0] if image.ndim == 3 else 1)
    ideal = method.ideal_output(instances, None)
    with torch.no_grad():
        out = net(torch.zeros((1, image.shape[0] if image.ndim == 3 else 1, 48, 48)))
    assert ideal.shape == out.shape[1:] and ideal.dtype == torch.float32
    pred = method.postprocess(ideal, None, 1)
    sbd = evaluate_samples([pred], [sample], [_metric_of("sbd")]).mean["sbd"]
    assert sbd > 0.9


def test_ceiling_tool_tells_a_decoder_limit_from_a_network_one():
    # patchperpix's own perfect patches on the overfit check's worms: 15-px patches
    # reassemble every worm, 7-px patches split them (the measured ceilings 1.000 / 0.683)
    assert overfit_target_ceiling.ceiling("patchperpix", patch_size=15) == pytest.approx(1.0)
    assert overfit_target_ceiling.ceiling("patchperpix", patch_size=7) < 0.9


def test_overfit_table_row_has_a_cell_per_column_and_shows_the_ceiling():
    import overfit as overfit_script  # benchmarks/overfit.py

    from benchbio.datasets.synthetic import OVERFIT_CHECK
    from benchbio.overfit import OverfitResult

    result = OverfitResult("harmonic-random", OVERFIT_CHECK, False, 1000, 0.8, 0.83, 120.0,
                           118.0, 250.0, [(50, 0.3, 6.0, 12.0)])
    header = overfit_script.HEADER.splitlines()[0]
    for ceiling_score, shown in ((0.7213, "| 0.721 |"), (None, "| 0.830 |  |")):
        row = overfit_script._row(result, ceiling_score)
        assert row.count("|") == header.count("|")
        assert shown in row
