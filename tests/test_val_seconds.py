"""Every validation logs the seconds since training began (for time-to-accuracy curves)."""

from __future__ import annotations

import mlflow
import pytest

from benchbio.report import SECONDS_KEY
from benchbio.training import RunConfig, run

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("fast_store")]


def test_each_validation_logs_val_seconds_at_its_epoch_increasing():
    config = RunConfig(method="embedseg", dataset="synthetic-cells", epochs=3, batch_size=2,
                       crop_size=32, lr=1e-3, device="cpu", val_every=2,
                       method_options={"width": 4, "kernel_size": 3},
                       dataset_options={"n_train": 2, "n_val": 1, "n_test": 1, "size": 32})
    result = run(config)
    client = mlflow.MlflowClient()
    seconds = [(m.step, m.value) for m in client.get_metric_history(result.run_id, SECONDS_KEY)]
    val = [m.step for m in client.get_metric_history(result.run_id, "val_sbd")]
    assert [step for step, _ in seconds] == val == [1, 2]  # every 2nd epoch and the last
    assert 0 < seconds[0][1] < seconds[1][1] <= result.seconds
    cpu = [(m.step, m.value) for m in client.get_metric_history(result.run_id,
                                                                 "val_cpu_seconds")]
    assert [step for step, _ in cpu] == [1, 2] and 0 < cpu[0][1] < cpu[1][1]


def test_val_cpu_seconds_count_the_methods_fit_as_val_seconds_do(monkeypatch):
    import time

    from benchbio.methods.embedseg import EmbedSeg

    def busy_fit(self, train, *, seed, log=None):  # a guide search's CPU time, say
        until = time.process_time() + 0.5
        while time.process_time() < until:
            pass

    monkeypatch.setattr(EmbedSeg, "fit", busy_fit)
    config = RunConfig(method="embedseg", dataset="synthetic-cells", epochs=1, batch_size=2,
                       crop_size=32, lr=1e-3, device="cpu", val_every=1,
                       method_options={"width": 4, "kernel_size": 3},
                       dataset_options={"n_train": 2, "n_val": 1, "n_test": 1, "size": 32})
    result = run(config)
    cpu = mlflow.MlflowClient().get_metric_history(result.run_id, "val_cpu_seconds")
    assert cpu[0].value >= 0.5
