"""A few training steps on each real dataset in ../shared/data, through the one loop.

The splits are cut to a few images so that the test stays fast; the samples themselves
come from the publishers' layouts exactly as `benchbio run` reads them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import benchbio
from benchbio.training import RunConfig, train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _small(dataset, n_train=2):
    train_split = dataset.splits.get("train") or dataset.splits["test"]
    splits = {
        "train": list(train_split[:n_train]),
        "val": [dataset.splits["test"][0]],
        "test": [dataset.splits["test"][1]],
    }
    return dataclasses.replace(dataset, splits=splits)


@pytest.mark.parametrize("name", ["cvppp", "celegans", "coco-person"])
def test_a_few_training_steps_on_real_data(shared_data: Path, tmp_path, name):
    dataset = _small(benchbio.create_dataset(name, data_dir=str(shared_data)))
    method = benchbio.create_method("harmonic", width=4, kernel_size=3, search_steps=5)
    config = RunConfig(method="harmonic", dataset=name, epochs=1, batch_size=2, lr=1e-3,
                       crop_size=64, device="cpu")
    logged = []
    result = train(config, method, dataset, tmp_path, lambda *a: logged.append(a))
    assert np.isfinite([v for k, v, _ in logged if k == "train_loss"]).all()
    assert dataset.val_metric in result.test or f"{dataset.val_metric}" in str(result.test)
    assert (tmp_path / "best.pt").is_file()
