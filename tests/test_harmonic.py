"""The harmonic method: targets (eq. 1-2), loss (eq. 5), guide cache, oracle inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import benchbio
from benchbio.evaluation import evaluate
from benchbio.guides import Guides
from benchbio.methods.harmonic import harmonic_targets

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _guides(n=4, size=16):
    rng = np.random.default_rng(0)
    params = np.column_stack([rng.uniform(0, 20, n), rng.uniform(0, 20, n),
                              rng.uniform(0, 6, n)])
    return Guides(params, size, size)


def test_targets_are_instance_means_with_background_as_object():
    g = _guides()
    labels = np.zeros((16, 16), int)
    labels[2:6, 2:8] = 1
    labels[9:14, 5:12] = 2
    t = harmonic_targets(g, labels, fg=None)
    emb = g.embed(labels)
    assert np.allclose(t["embedding"][:, 3, 3], emb[0], atol=1e-6)
    assert np.allclose(t["embedding"][:, 10, 6], emb[1], atol=1e-6)
    bg = g.maps(16, 16)[:, labels == 0].mean(1)
    assert np.allclose(t["embedding"][:, 0, 0], bg, atol=1e-6)
    assert t["weight"].min() == 1.0  # every pixel counts without a fg mask


def test_targets_with_fg_mask_weight_only_foreground():
    labels = np.zeros((16, 16), int)
    labels[2:6, 2:8] = 1
    t = harmonic_targets(_guides(), labels, fg=labels > 0)
    assert t["weight"].sum() == 24 and t["weight"][0, 0] == 0


def test_targets_with_fg_mask_keep_every_object_of_a_crop_without_background():
    from test_instances import background_free_crop

    crop = background_free_crop()
    g = Guides(_guides().params, 12, 6)
    t = harmonic_targets(g, crop, fg=crop > 0)
    assert t["weight"].min() == 1.0  # both objects carry weight
    maps = g.maps(12, 6)
    assert np.allclose(t["embedding"][:, 0, 0], maps[:, crop == 3].mean(1), atol=1e-6)
    assert np.allclose(t["embedding"][:, -1, 0], maps[:, crop == 5].mean(1), atol=1e-6)


def test_overlap_pixels_are_ignored_but_objects_keep_full_extent():
    g = _guides()
    stack = np.zeros((2, 16, 16), bool)
    stack[0, 2:10, 2:10] = True
    stack[1, 6:14, 6:14] = True
    t = harmonic_targets(g, stack, fg=stack.any(0))
    assert t["weight"][7, 7] == 0  # in both masks
    assert t["weight"][3, 3] == 1
    assert np.allclose(t["embedding"][:, 3, 3], g.embed(stack)[0], atol=1e-6)


def test_loss_zero_when_perfect_and_mean_l1_otherwise():
    method = benchbio.create_method("harmonic", n_guides=4)
    target = torch.rand(2, 4, 8, 8)
    weight = torch.zeros(2, 8, 8)
    weight[:, :4] = 1
    batch = {"embedding": target, "weight": weight}
    assert method.loss(target.clone(), batch).item() == 0.0
    off = target.clone()
    off[:, :, :4] += 0.25  # error only where weighted
    off[:, :, 4:] += 7.0  # unweighted pixels do not count
    assert np.isclose(method.loss(off, batch).item(), 0.25)


def test_unknown_option_is_a_clear_error():
    with pytest.raises(benchbio.BenchbioError, match="has no option n_guide"):
        benchbio.create_method("harmonic", n_guide=3)
    with pytest.raises(benchbio.BenchbioError, match="must be of type int"):
        benchbio.create_method("harmonic", n_guides="many")
    with pytest.raises(benchbio.BenchbioError, match="is not one of: flat, gaussian"):
        benchbio.create_method("harmonic", cluster_kernel="epanechnikov")


@pytest.fixture(scope="module")
def cells():
    ds = benchbio.create_dataset("synthetic-cells", n_train=8, n_val=1, n_test=6)
    return list(ds.splits["train"]), list(ds.splits["test"])


def test_guide_search_is_cached_per_training_set(cells, monkeypatch):
    train, _ = cells
    first = benchbio.create_method("harmonic", search_steps=30)
    first.fit(train, seed=0)
    assert first.search["cached"] == 0.0

    def fail(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr("benchbio.methods.harmonic.search_guides", fail)
    second = benchbio.create_method("harmonic", search_steps=30)
    second.fit(train, seed=0)
    assert second.search["cached"] == 1.0
    assert np.allclose(first.guides.params, second.guides.params)


def test_oracle_targets_recover_instances(cells):
    """Ideal network output -> the inference step recovers the ground truth.

    The guide search separates objects by eps in L1 (eq. 4), so mean-shift with
    bandwidth eps in L1 separates every pair. The default L2 kernel (more tolerant of a
    trained network's noise) can merge the rare pairs closer than eps in L2.
    """
    train, test = cells
    method = benchbio.create_method("harmonic", search_steps=200, cluster_metric="l1")
    method.fit(train, seed=0)
    preds = [
        method.postprocess(
            torch.from_numpy(harmonic_targets(method.guides, s.instances, None)["embedding"]),
            None, 20)
        for s in test
    ]
    sbd = evaluate(preds, [s.instances for s in test], ["sbd"]).mean["sbd"]
    assert sbd >= 0.99


@pytest.mark.parametrize("name", ["harmonic", "discriminative"])
def test_cluster_kernel_option_reaches_the_mean_shift(name, monkeypatch):
    import benchbio.cluster

    seen = []
    real = benchbio.cluster.mean_shift

    def spy(*args, **kwargs):
        seen.append(kwargs.get("kernel"))
        return real(*args, **kwargs)

    monkeypatch.setattr(benchbio.cluster, "mean_shift", spy)
    method = benchbio.create_method(name, cluster_kernel="gaussian")
    output = torch.zeros(12, 8, 8)
    output[:, :, 4:] = 1.0  # two flat halves: two clusters, one taken as background
    labels = method.postprocess(output, None, 0).labels
    assert seen == ["gaussian"]
    halves = {int(labels[:, :4].max()), int(labels[:, 4:].max())}
    assert labels.max() == 1 and halves == {0, 1}


def test_state_round_trip_restores_guides(cells, tmp_path):
    train, _ = cells
    method = benchbio.create_method("harmonic", search_steps=10, width=4)
    method.fit(train, seed=1)
    model = method.build_model(1)
    other = benchbio.create_method("harmonic", search_steps=10, width=4)
    other.load_state(method.state())
    assert np.allclose(other.guides.params, method.guides.params)
    files = method.write_artifacts(tmp_path)
    assert {p.name for p in files} == {"guides.json", "guides.png"}
    out = model(torch.zeros(1, 1, 32, 32))
    assert out.shape == (1, 12, 32, 32)


def test_guide_file_starts_from_a_released_set_and_bad_files_fail_early(tmp_path):
    from benchbio.errors import BenchbioError
    from benchbio.guides import load_guide_set

    method = benchbio.create_method("harmonic", guide_file="authors-cvppp", search=False)
    start = method.start([np.zeros((32, 32), int)], seed=0)
    assert np.array_equal(start.params, load_guide_set("authors-cvppp").params)
    with pytest.raises(BenchbioError, match="no such file"):
        benchbio.create_method("harmonic", guide_file=str(tmp_path / "none.json"))
