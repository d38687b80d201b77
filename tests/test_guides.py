"""Guide functions (eq. 3), guided embeddings (eq. 1-2) and the guide search (eq. 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchbio.errors import BenchbioError
from benchbio.guides import (
    RELEASED_SETS,
    GuideMaps,
    Guides,
    guide_loss,
    guide_separation,
    load_guide_set,
    sample_guides,
    search_guides,
)


def test_guides_follow_equation_3():
    g = Guides(np.array([[2.0, 3.0, 0.5]]), ref_height=10.0, ref_width=20.0)
    ys, xs = np.array([4.0]), np.array([7.0])
    expected = np.sin(2.0 * 7.0 / 20.0 + 3.0 * 4.0 / 10.0 + 0.5)
    assert np.isclose(g.evaluate(ys, xs)[0, 0], expected)
    assert g.maps(5, 8).shape == (1, 5, 8)
    assert np.isclose(g.maps(5, 8)[0, 4, 7], expected)


def test_embedding_is_mean_of_guides_over_object():
    g = Guides(np.array([[5.0, 0.0, 0.0], [0.0, 7.0, 1.0]]), 8.0, 8.0)
    labels = np.zeros((8, 8), int)
    labels[1:3, 2:6] = 1
    labels[5:8, 0:2] = 2
    maps = g.maps(8, 8)
    emb = g.embed(labels)
    assert np.allclose(emb[0], maps[:, labels == 1].mean(1))
    assert np.allclose(emb[1], maps[:, labels == 2].mean(1))


def test_guide_maps_at_stride_are_aligned_with_full_resolution():
    g = Guides(np.array([[9.0, 4.0, 0.3]]), 32.0, 32.0)
    layer = GuideMaps(g)
    full = layer(32, 32, 1, torch.zeros(1)).numpy()
    assert np.allclose(full, g.maps(32, 32), atol=1e-5)
    half = layer(16, 16, 2, torch.zeros(1)).numpy()
    # a stride-2 cell covers pixels 2i, 2i+1: its centre is 2i + 0.5
    expected = g.evaluate(np.array([0.5]), np.array([2.5]))[0, 0]
    assert np.isclose(half[0, 0, 1], expected, atol=1e-5)


def test_guide_loss_is_hinge_on_l1_distance():
    params = torch.tensor([[0.0, 0.0, np.pi / 2]])  # constant guide = 1 everywhere
    pts = torch.zeros(2, 1, 2)
    wts = torch.ones(2, 1)
    pairs = torch.tensor([[0, 1]])
    hinge, separated = guide_loss(params, pts, wts, (1.0, 1.0), pairs, eps=0.5)
    assert torch.isclose(hinge[0], torch.tensor(0.5))  # identical embeddings
    assert separated[0] == 0


def test_search_separates_objects_of_synthetic_cells():
    from benchbio.datasets.synthetic import make_cells

    labels = [make_cells(seed)[1] for seed in range(6)]
    logged = []
    guides, final = search_guides(labels, steps=40, seed=0, log=lambda *a: logged.append(a))
    assert guides.params.shape == (12, 3)
    assert final["separated"] > 0.99
    keys = {key for key, *_ in logged}
    assert {"guide_hinge_before", "guide_hinge_after", "guide_separated_before",
            "guide_separated_after", "guide_max_change"} <= keys
    again, _ = search_guides(labels, steps=40, seed=0)
    assert np.allclose(again.params, guides.params)  # deterministic for a seed


def test_axis_family_is_the_authors_random_start():
    g = sample_guides(12, (0.0, 25.0), 128.0, 128.0, np.random.default_rng(0), "axis")
    fx, fy, phase = g.params.T
    assert (fy[:6] == 0).all() and (fx[6:] == 0).all()  # 6 along x, 6 along y
    assert (np.abs(fx[:6]) <= 25).all() and (np.abs(fy[6:]) <= 25).all()
    assert (fx[:6] < 0).any() and (fx[:6] > 0).any()  # both signs
    assert (phase >= 0).all() and (phase < 1).all()  # the authors' [0, 1)
    odd = sample_guides(5, (0.0, 25.0), 1.0, 1.0, np.random.default_rng(0), "axis")
    assert (odd.params[:3, 1] == 0).all() and (odd.params[3:, 0] == 0).all()


def test_oblique_family_is_the_papers():
    g = sample_guides(50, (30.0, 50.0), 1.0, 1.0, np.random.default_rng(1), "oblique")
    assert g.params[:, :2].min() >= 30 and g.params[:, :2].max() <= 50
    assert g.params[:, 2].max() > 1.0  # phases over [0, 2 pi)


@pytest.mark.parametrize("name", RELEASED_SETS)
def test_released_sets_load(name):
    g = load_guide_set(name, n=12)
    assert g.params.shape == (12, 3) and g.ref_height == g.ref_width == 447.0
    assert 20 < np.abs(g.params[:, :2]).max() < 43


def test_released_cvppp_set_is_the_published_table():
    g = load_guide_set("authors-cvppp")
    assert np.allclose(g.params[0], [-24.2230, 0, 0.4452])
    assert np.allclose(g.params[-1], [0, -22.3323, 1.0008])


def test_guide_file_round_trip_and_errors(tmp_path):
    g = Guides(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), 10.0, 20.0)
    g.save(tmp_path / "g.json")
    assert np.array_equal(load_guide_set(str(tmp_path / "g.json")).params, g.params)
    with pytest.raises(BenchbioError, match="n_guides=2"):
        load_guide_set(str(tmp_path / "g.json"), n=12)
    with pytest.raises(BenchbioError, match="no such file"):
        load_guide_set(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"params": [[1, 2]]}')
    with pytest.raises(BenchbioError, match="not a guide set"):
        load_guide_set(str(tmp_path / "bad.json"))


def test_metrics_of_the_margin():
    wts = torch.ones(2, 1)
    pairs = torch.tensor([[0, 1]])
    params = torch.tensor([[np.pi / 2, 0.0, 0.0], [0.0, 0.0, 0.0]])  # sin(pi/2 x), 0
    pts = torch.tensor([[[0.0, 0.0]], [[0.0, 1.0]]])  # x = 0 and x = 1
    # embeddings (0, 0) and (1, 0): L1 = L2 = squared L2 = 1
    for metric in ("l1", "l2", "sql2"):
        hinge, sep = guide_loss(params, pts, wts, (1.0, 1.0), pairs, eps=1.5, metric=metric)
        assert torch.isclose(hinge[0], torch.tensor(0.5)) and sep[0] == 0
    params = torch.tensor([[np.pi / 2, 0.0, 0.0], [np.pi / 2, 0.0, 0.0]])  # (1, 1) apart
    expected = {"l1": 2.0, "l2": 2 ** 0.5, "sql2": 2.0}
    for metric, d in expected.items():
        hinge, _ = guide_loss(params, pts, wts, (1.0, 1.0), pairs, eps=3.0, metric=metric)
        assert torch.isclose(hinge[0], torch.tensor(3.0 - d), atol=1e-5)


def test_search_moves_a_start_that_merges_objects():
    from benchbio.datasets.synthetic import make_cells

    labels = [make_cells(seed, size=48)[1] for seed in range(4)]
    start = sample_guides(12, (0.0, 2.0), 48.0, 48.0, np.random.default_rng(0), "axis")
    for metric, background, eps in (("l2", False, 0.5), ("sql2", True, 0.5), ("l1", False, 2)):
        guides, fig = search_guides(labels, start=start, metric=metric, background=background,
                                    eps=eps, steps=60, seed=0)
        assert fig["loss_before"] > fig["loss"] and fig["separated"] > fig["separated_before"]
        again = guide_separation(guides, labels, eps=eps, metric=metric, background=background)
        assert np.isclose(again["loss"], fig["loss"], atol=1e-5)
    unmoved, fig = search_guides(labels, start=start, metric="l2", steps=0)
    assert np.array_equal(unmoved.params, start.params) and fig["max_change"] == 0
    assert fig["loss"] == fig["loss_before"] > 0


def test_maps_at_an_origin_are_the_whole_image_maps_there():
    g = Guides(np.array([[9.0, 4.0, 0.3], [0.0, 17.0, 1.0]]), 32.0, 32.0)
    whole = g.maps(40, 50)
    assert np.allclose(g.maps(8, 10, origin=(5, 7)), whole[:, 5:13, 7:17])
    layer = GuideMaps(g)
    layer.origins = torch.tensor([[5.0, 7.0], [0.0, 0.0]])
    batch = layer(8, 10, 1, torch.zeros(1)).numpy()
    assert batch.shape == (2, 2, 8, 10)
    assert np.allclose(batch[0], whole[:, 5:13, 7:17], atol=1e-5)
    assert np.allclose(batch[1], whole[:, :8, :10], atol=1e-5)
