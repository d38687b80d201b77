"""The synthetic generators: deterministic, and the tissue knob makes clumps."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import benchbio
from benchbio.datasets.synthetic import make_cells
from benchbio.errors import BenchbioError


def test_carpet_is_unchanged_by_the_tissue_option():
    # Label checksums of make_cells(seed) before the tissue option existed: recorded
    # results on synthetic-cells stay reproducible.
    golden = {0: "6176b9dc836687b5", 1: "78f844874667c754"}
    for seed, digest in golden.items():
        labels = make_cells(seed)[1].astype(np.int32)
        assert hashlib.sha256(labels.tobytes()).hexdigest()[:16] == digest
        assert np.array_equal(make_cells(seed, tissue=1.0)[1], make_cells(seed)[1])


def test_tissue_makes_clumps_with_gaps():
    carpet = [make_cells(seed)[1] for seed in range(6)]
    clumps = [make_cells(seed, tissue=0.3)[1] for seed in range(6)]
    n_carpet = np.mean([lab.max() for lab in carpet])
    n_clumps = np.mean([lab.max() for lab in clumps])
    fg_carpet = np.mean([(lab > 0).mean() for lab in carpet])
    fg_clumps = np.mean([(lab > 0).mean() for lab in clumps])
    assert 55 < n_carpet < 80 and 12 < n_clumps < 32
    assert fg_carpet > 0.6 and 0.12 < fg_clumps < 0.4
    # cells still touch inside a clump: some pairs of labels share a border
    lab = clumps[0]
    touching = (lab[:, 1:] != lab[:, :-1]) & (lab[:, 1:] > 0) & (lab[:, :-1] > 0)
    assert touching.any()
    # deterministic for a seed
    assert np.array_equal(make_cells(3, tissue=0.3)[1], make_cells(3, tissue=0.3)[1])


def test_tissue_is_a_dataset_option():
    ds = benchbio.create_dataset("synthetic-cells", tissue=0.3, n_train=2, n_val=1, n_test=1)
    assert ds.options["tissue"] == 0.3
    first = make_cells(0, tissue=0.3)[1]  # dataset seed 0, train image 0
    assert np.array_equal(ds.split("train")[0].instances, first)
    for bad in (0.0, 1.5):
        with pytest.raises(BenchbioError, match="tissue"):
            benchbio.create_dataset("synthetic-cells", tissue=bad)


def test_sparse_nuclei_are_separate_and_touching_at_about_15_percent_foreground():
    from scipy import ndimage as ndi
    from skimage.measure import label as components

    from benchbio.datasets.synthetic import make_nuclei
    from benchbio.evaluation import evaluate

    labels = [make_nuclei(seed)[1] for seed in range(8)]
    assert all(0.14 <= (lab > 0).mean() <= 0.17 for lab in labels)
    assert all(15 <= lab.max() <= 25 for lab in labels)
    touching = alone = 0
    for lab in labels:
        for k in range(1, lab.max() + 1):
            ring = ndi.binary_dilation(lab == k) & (lab > 0) & (lab != k)
            touching += ring.any()
            alone += not ring.any()
    assert touching > 0.3 * (touching + alone) and alone > 0.2 * (touching + alone)
    # touching nuclei matter: connected components of the true foreground fall short
    cc = evaluate([components(lab > 0) for lab in labels], labels, metrics=["sbd"])
    assert cc.mean["sbd"] < 0.8
    # recorded results on the sparse regime stay reproducible
    golden = {0: "5468903b587c31e2", 1: "e955524a439c5eec"}
    for seed, digest in golden.items():
        assert hashlib.sha256(labels[seed].astype(np.int32).tobytes()).hexdigest()[:16] == digest


def test_sparse_is_a_dataset_option_with_no_mask_at_test():
    from benchbio.datasets.synthetic import make_nuclei

    ds = benchbio.create_dataset("synthetic-cells", sparse=True, n_train=1, n_val=1, n_test=1)
    sample = ds.split("test")[0]
    assert not ds.fg_at_test and sample.fg is None
    assert np.array_equal(ds.split("train")[0].instances, make_nuclei(0)[1])
    assert np.array_equal(
        benchbio.create_dataset("synthetic-cells", sparse=False, n_train=1).split("train")[0]
        .instances, make_cells(0)[1])
    with pytest.raises(BenchbioError, match="sparse=true places nuclei"):
        benchbio.create_dataset("synthetic-cells", sparse=True, tissue=0.3)
