"""The harmonic ablations differ from ``harmonic`` in exactly the one thing they ablate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import train_steps

from benchbio import METHODS, create_method
from benchbio.data import Sample
from benchbio.datasets.synthetic import make_cells
from benchbio.evaluation import evaluate
from benchbio.guides import Guides
from benchbio.methods.harmonic import GUIDE_RANGES, Harmonic, harmonic_targets

ABLATIONS = {  # name: the options it changes
    "harmonic-coordconv": {"position": "coordconv"},
    "harmonic-noguide": {"position": "none"},
    "harmonic-random": {"search": False},
    "harmonic-low": {"search": False, "guide_band": "low"},
    "harmonic-high": {"search": False, "guide_band": "high"},
}
AUTHORS = {"guide_family": "axis", "guide_band": "full", "search_margin": None,
           "search_metric": "sql2", "search_background": True,
           "pixel_weight": "log_area", "sinconv_norm": False, "decoder": "authors",
           "cluster_kernel": "flat"}


def _samples(n: int = 2, size: int = 32) -> list[Sample]:
    return [Sample(f"s{i}", *make_cells(i, size=size)) for i in range(n)]


def _fitted(name: str, train: list[Sample], **options) -> Harmonic:
    method = create_method(name, **{"search_steps": 10, **options})
    method.fit(train, seed=0)
    return method


@pytest.mark.parametrize("name", sorted(ABLATIONS) + ["harmonic-authors"])
def test_options_differ_in_exactly_the_ablated_ones(name):
    changes = ABLATIONS.get(name, AUTHORS)
    base, ablated = create_method("harmonic").options(), create_method(name).options()
    assert {k: ablated[k] for k in base if base[k] != ablated[k]} == {
        k: v for k, v in changes.items() if base[k] != v}
    assert all(ablated[k] == v for k, v in changes.items())
    assert METHODS.descriptions()[name]
    # The hooks are harmonic's own: only the option differs.
    method = create_method(name)
    assert isinstance(method, Harmonic)
    for hook in ("fit", "build_model", "targets", "loss", "postprocess"):
        assert getattr(type(method), hook) is getattr(Harmonic, hook)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_model_structure(name):
    train = _samples()
    base = _fitted("harmonic", train, width=8).build_model(1)
    model = _fitted(name, train, width=8).build_model(1)
    shapes = {k: v.shape for k, v in base.state_dict().items()}
    ablated = {k: v.shape for k, v in model.state_dict().items()}
    if "position" not in ABLATIONS[name]:  # same network, only the frozen guides differ
        assert ablated == shapes
        return
    extra = {"coordconv": 2, "none": 0}[ABLATIONS[name]["position"]]
    guide_buffers = {k for k in shapes if k.endswith("position.params")}
    assert guide_buffers and set(ablated) == set(shapes) - guide_buffers
    changed = {k for k in ablated if ablated[k] != shapes[k]}
    convs = {k for k in ablated if k.endswith(".conv.0.weight") and "augmented" in k or
             k == "head_conv.conv.0.weight"}
    assert changed == convs
    for k in changed:  # input channels: features + 12 guides -> features + (2 or 0)
        assert ablated[k][1] == shapes[k][1] - 12 + extra


@pytest.mark.parametrize("name", ["harmonic-random", "harmonic-low", "harmonic-high"])
@pytest.mark.parametrize("family", ["axis", "oblique"])
def test_unsearched_guides_come_from_their_range(name, family):
    method = _fitted(name, _samples(), guide_family=family)
    lo, hi = GUIDE_RANGES[family][method.opts.guide_band]
    freqs = np.abs(method.guides.params[:, :2])
    assert method.search["cached"] == 0.0 and method.search["max_change"] == 0.0
    assert freqs.max(1).min() >= lo and freqs.max() <= hi
    if family == "axis":  # one frequency of each guide is exactly 0
        assert (freqs.min(1) == 0).all()


def test_random_is_harmonic_without_the_search():
    # The same start: harmonic-random's guides are the ones harmonic's search starts from.
    train = _samples(4, size=48)
    searched = _fitted("harmonic", train, freq_range=(0.0, 2.0))  # a start that merges
    unsearched = _fitted("harmonic-random", train, freq_range=(0.0, 2.0))
    start = searched.start([s.instances for s in train], seed=0)
    assert np.array_equal(unsearched.guides.params, start.params)
    assert searched.search["loss_before"] == unsearched.search["loss"]
    assert searched.search["loss"] < searched.search["loss_before"]
    assert searched.search["max_change"] > 0


def separating_guides(extent: float) -> Guides:
    """6 guides along x and 6 along y, frequencies 2..12: on 64 px synthetic cells every
    pair of objects is >= 1.5 apart in L2, so mean-shift at bandwidth 0.5 can split them.
    (The eq. 4 search separates pairs in L1, which does not guarantee that.)"""
    f = np.arange(2.0, 13.0, 2.0)
    phase = np.linspace(0, np.pi, 6)
    params = np.vstack([np.column_stack([f, 0 * f, phase]), np.column_stack([0 * f, f, phase])])
    return Guides(params, extent, extent)


@pytest.mark.parametrize("name", sorted(ABLATIONS) + ["harmonic-authors"])
def test_oracle_recovers_instances(name):
    # Ideal output = the harmonic targets of well-separating guides.
    method = create_method(name)
    method.load_state({"guides": separating_guides(64).to_json(), "search": {}})
    labels = [make_cells(seed, size=64)[1] for seed in range(2)]
    preds = [
        method.postprocess(torch.from_numpy(harmonic_targets(method.guides, g, None)["embedding"]),
                           None, 5)
        for g in labels
    ]
    assert evaluate(preds, labels, ["sbd"]).mean["sbd"] >= 0.99


def test_authors_network_has_bare_sinconv_and_their_decoder_widths():
    method = _fitted("harmonic-authors", _samples(), width=8)
    model = method.build_model(1)
    assert [a.conv[0].out_channels for a in model.augmented] == [32, 16, 8, 8]
    assert all(len(a.conv) == 1 for a in [*model.augmented, model.head_conv])
    base = _fitted("harmonic", _samples(), width=8).build_model(1)
    assert [a.conv[0].out_channels for a in base.augmented] == [64, 32, 16, 8]
    assert all(len(a.conv) == 3 for a in [*base.augmented, base.head_conv])


@pytest.mark.parametrize("name", sorted(ABLATIONS) + ["harmonic-authors"])
def test_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    train = _samples()
    method = _fitted(name, train, width=8)
    losses = train_steps(
        method, [s.image for s in train], [s.instances for s in train], steps=10
    )
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
