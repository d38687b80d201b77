"""The foreground head of harmonic and discriminative, and embedseg's seed fallback:
where the protocol gives no mask, sparse objects must not vanish into the background."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import train_steps

from benchbio import create_method
from benchbio.errors import BenchbioError
from benchbio.evaluation import evaluate
from benchbio.foreground import (
    foreground_loss,
    foreground_target,
    head_channels,
    predicted_foreground,
)
from benchbio.guides import Guides
from benchbio.methods.harmonic import expand_targets

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def sparse_labels(size: int = 32) -> np.ndarray:
    """Three small objects on a mostly empty image (two of them touching)."""
    labels = np.zeros((size, size), np.int64)
    labels[4:9, 4:9] = 1
    labels[4:9, 9:14] = 2
    labels[20:26, 18:24] = 3
    return labels


def _harmonic(**options):
    method = create_method("harmonic", width=4, kernel_size=3, **options)
    rng = np.random.default_rng(0)
    method.guides = Guides(np.column_stack([rng.uniform(0, 20, 12), rng.uniform(0, 20, 12),
                                            rng.uniform(0, 6, 12)]), 32, 32)
    return method


def test_only_the_head_rule_adds_a_channel():
    assert head_channels("head") == 1
    assert head_channels("cluster") == 0


def test_foreground_helpers():
    labels = sparse_labels()
    target = foreground_target(labels)
    assert target.dtype == np.float32 and target.sum() == (labels > 0).sum()
    logit = torch.from_numpy(np.where(labels > 0, 8.0, -8.0).astype(np.float32))
    assert np.array_equal(predicted_foreground(logit), labels > 0)
    assert foreground_loss(logit[None], torch.from_numpy(target)[None]).item() < 1e-3


@pytest.mark.parametrize("name", ["harmonic", "discriminative"])
def test_a_bad_background_rule_is_one_clear_error(name):
    with pytest.raises(BenchbioError, match="background=.largest. is not one of: cluster, head"):
        create_method(name, background="largest")


def test_harmonic_head_adds_a_channel_trains_foreground_only_and_clusters_inside_it():
    labels = sparse_labels()
    method = _harmonic(background="head")
    model = method.build_model(1)
    assert model(torch.zeros(1, 1, 32, 32)).shape[1] == 13
    compact = method.targets(labels, None)
    assert np.array_equal(compact["foreground"], labels > 0)
    t = {k: v[0].numpy() for k, v in expand_targets(
        {k: torch.from_numpy(np.asarray(v))[None] for k, v in compact.items()}).items()}
    assert np.array_equal(t["weight"] > 0, labels > 0)  # background carries no embedding
    # the ideal output: instance means inside, anything outside, the head's logit right
    out = np.concatenate([t["embedding"], np.where(labels > 0, 9.0, -9.0)[None]]).astype(
        np.float32)
    out[:12, labels == 0] = t["embedding"][:, 5, 5][:, None]  # background looks like object 1
    pred = method.postprocess(torch.from_numpy(out), None, min_area=1)
    assert evaluate([pred], [labels], metrics=["sbd"]).mean["sbd"] == pytest.approx(1.0)
    # the authors' rule on the same embeddings joins object 1 to the background
    plain = _harmonic().postprocess(torch.from_numpy(out[:12]), None, min_area=1)
    assert evaluate([plain], [labels], metrics=["sbd"]).mean["sbd"] < 0.8
    losses = train_steps(method, [np.zeros((1, 32, 32), np.float32)], [labels], steps=8)
    assert losses[-1] < losses[0]


def test_discriminative_head_ignores_background_in_the_embedding_loss():
    labels = sparse_labels()
    method = create_method("discriminative", width=4, kernel_size=3, background="head")
    assert method.build_model(1)(torch.zeros(1, 1, 32, 32)).shape[1] == 13
    t = method.targets(labels, None)
    assert (t["clusters"][labels == 0] == -1).all() and t["clusters"].max() == 2
    emb = np.zeros((13, 32, 32), np.float32)
    for k in (1, 2, 3):
        emb[k, labels == k] = 3.0  # 3 apart: beyond 2 delta_d
    emb[12] = np.where(labels > 0, 9.0, -9.0)
    pred = method.postprocess(torch.from_numpy(emb), None, min_area=1)
    assert evaluate([pred], [labels], metrics=["sbd"]).mean["sbd"] == pytest.approx(1.0)
    losses = train_steps(method, [np.zeros((1, 32, 32), np.float32)], [labels], steps=8)
    assert losses[-1] < losses[0]


def test_embedseg_seed_fallback_finds_instances_an_unconfident_seed_map_hides():
    from test_methods_embedseg import ideal_output

    labels = sparse_labels()
    out = ideal_output(labels)
    out[4] = torch.from_numpy(np.where(labels > 0, 1.0, -3.0).astype(np.float32))  # seed .73
    assert create_method("embedseg").postprocess(out, None, 1).labels.max() == 0
    pred = create_method("embedseg", seed_fallback=0.5).postprocess(out, None, 1)
    assert evaluate([pred.labels], [labels], metrics=["sbd"]).mean["sbd"] > 0.95
    confident = ideal_output(labels)  # seeds reach 0.9: the fallback changes nothing
    assert np.array_equal(create_method("embedseg", seed_fallback=0.5).postprocess(
        confident, None, 1).labels, create_method("embedseg").postprocess(confident, None, 1)
        .labels)
