"""Several sweep workers writing to one tracking store lose no run and no metric: four
processes log runs, params, tags and per-step metrics at once through benchbio's
tracking calls, to a shared SQLite file and to a real MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest

pytestmark = pytest.mark.slow

WORKERS, RUNS, STEPS, KEYS = 4, 2, 15, ("train_loss", "val_sbd")

#: One sweep worker: what `training.run` does to the store, as fast as it can.
WORKER = """
import sys, time
import mlflow
from benchbio.tracking import check_tracking_store, retrying, tracked_run
from pathlib import Path
worker, runs, steps = (int(a) for a in sys.argv[1:4])
workers, keys = int(sys.argv[4]), sys.argv[5].split(",")
check_tracking_store()
Path(f"ready-{worker}").touch()
deadline = time.time() + 120
while len(list(Path().glob("ready-*"))) < workers and time.time() < deadline:
    time.sleep(0.01)  # all workers hit the store together
log_metric, log_params = retrying(mlflow.log_metric), retrying(mlflow.log_params)
for r in range(runs):
    with tracked_run("concurrency", f"w{worker}-r{r}", {"worker": str(worker)}):
        log_params({"worker": worker, "run": r, "lr": 0.001})
        for step in range(steps):
            for i, key in enumerate(keys):
                log_metric(key, worker * 1000 + r * 100 + step + i / 10, step=step)
"""


def run_workers(cwd) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(w), str(RUNS), str(STEPS),
                               str(WORKERS), ",".join(KEYS)],
                              cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for w in range(WORKERS)]
    outputs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]


def assert_nothing_lost() -> None:
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["concurrency"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == sorted(
        f"w{w}-r{r}" for w in range(WORKERS) for r in range(RUNS))
    for run in runs:
        assert run.info.status == "FINISHED"
        w, r = int(run.data.params["worker"]), int(run.data.params["run"])
        for i, key in enumerate(KEYS):
            history = sorted((m.step, m.value) for m in
                             client.get_metric_history(run.info.run_id, key))
            assert history == [(s, w * 1000 + r * 100 + s + i / 10) for s in range(STEPS)]


def test_four_workers_share_one_sqlite_file_created_by_the_first(tmp_path):
    """The default store: no worker has created the file yet when all four start."""
    db = os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")
    assert not os.path.exists(db)
    run_workers(tmp_path)
    assert_nothing_lost()


def test_four_workers_share_one_mlflow_server(mlflow_server, tmp_path):
    run_workers(tmp_path)
    assert_nothing_lost()


@pytest.mark.usefixtures("fast_store")
def test_run_lands_in_its_experiment_when_another_worker_created_it_first(monkeypatch):
    """MLflow's set_experiment, losing the creation race, returns the experiment without
    making it active; tracked_run must still file the run under it, not "Default"."""
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from benchbio.tracking import tracked_run

    mlflow.MlflowClient().create_experiment("concurrency")  # the other worker's
    real = TrackingServiceClient.get_experiment_by_name
    calls = []

    def not_yet_seen(self, name):  # this worker looked just before the other created it
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", not_yet_seen)
    with tracked_run("concurrency", "late", {}) as run:
        pass
    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", real)
    assert len(calls) >= 2  # the race path was taken
    exp = mlflow.get_experiment_by_name("concurrency")
    assert run.info.experiment_id == exp.experiment_id
