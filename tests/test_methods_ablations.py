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

ABLATIONS = {
    "harmonic-coordconv": ("position", "coordconv"),
    "harmonic-noguide": ("position", "none"),
    "harmonic-random": ("guides", "random"),
    "harmonic-low": ("guides", "low"),
    "harmonic-high": ("guides", "high"),
}


def _samples(n: int = 2, size: int = 32) -> list[Sample]:
    return [Sample(f"s{i}", *make_cells(i, size=size)) for i in range(n)]


def _fitted(name: str, train: list[Sample], **options) -> Harmonic:
    method = create_method(name, search_steps=10, **options)
    method.fit(train, seed=0)
    return method


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_options_differ_in_exactly_the_ablated_one(name):
    key, value = ABLATIONS[name]
    base, ablated = create_method("harmonic").options(), create_method(name).options()
    assert {k for k in base if base[k] != ablated[k]} == {key}
    assert ablated[key] == value
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
    key, value = ABLATIONS[name]
    if key == "guides":  # same network, only the frozen guide parameters differ
        assert ablated == shapes
        return
    extra = {"coordconv": 2, "none": 0}[value]
    guide_buffers = {k for k in shapes if k.endswith("position.params")}
    assert guide_buffers and set(ablated) == set(shapes) - guide_buffers
    changed = {k for k in ablated if ablated[k] != shapes[k]}
    convs = {k for k in ablated if k.endswith(".conv.0.weight") and "augmented" in k or
             k == "head_conv.conv.0.weight"}
    assert changed == convs
    for k in changed:  # input channels: features + 12 guides -> features + (2 or 0)
        assert ablated[k][1] == shapes[k][1] - 12 + extra


@pytest.mark.parametrize("name", ["harmonic-random", "harmonic-low", "harmonic-high"])
def test_unsearched_guides_come_from_their_range(name):
    method = _fitted(name, _samples())
    lo, hi = GUIDE_RANGES[ABLATIONS[name][1]]
    freqs = method.guides.params[:, :2]
    assert method.search["cached"] == 0.0 and "loss" not in method.search
    assert freqs.min() >= lo and freqs.max() <= hi


def separating_guides(extent: float) -> Guides:
    """6 guides along x and 6 along y, frequencies 2..12: on 64 px synthetic cells every
    pair of objects is >= 1.5 apart in L2, so mean-shift at bandwidth 0.5 can split them.
    (The eq. 4 search separates pairs in L1, which does not guarantee that.)"""
    f = np.arange(2.0, 13.0, 2.0)
    phase = np.linspace(0, np.pi, 6)
    params = np.vstack([np.column_stack([f, 0 * f, phase]), np.column_stack([0 * f, f, phase])])
    return Guides(params, extent, extent)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
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


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    train = _samples()
    method = _fitted(name, train, width=8)
    losses = train_steps(
        method, [s.image for s in train], [s.instances for s in train], steps=10
    )
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
