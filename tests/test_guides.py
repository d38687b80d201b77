"""Guide functions (eq. 3), guided embeddings (eq. 1-2) and the guide search (eq. 4)."""

from __future__ import annotations

import numpy as np
import torch

from benchbio.guides import GuideMaps, Guides, guide_loss, search_guides


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
    assert any(key == "guide_search_separated" for key, *_ in logged)
    again, _ = search_guides(labels, steps=40, seed=0)
    assert np.allclose(again.params, guides.params)  # deterministic for a seed
