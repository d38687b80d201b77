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
