"""Several sweep workers writing to one tracking store lose no run and no metric: four
processes log runs, params, tags and per-step metrics at once through benchbio's
tracking calls, to a shared SQLite file and to a real MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import mlflow
import pytest

pytestmark = pytest.mark.slow

WORKERS, RUNS, STEPS, KEYS = 4, 2, 15, ("train_loss", "val_sbd")

#: One sweep worker: what `training.run` does to the store, as fast as it can.
WORKER = """
import sys, time
import mlflow
from benchbio.tracking import check_tracking_store, retrying, tracked_run
worker, runs, steps = (int(a) for a in sys.argv[1:4])
start_at, keys = float(sys.argv[4]), sys.argv[5].split(",")
check_tracking_store()
time.sleep(max(0.0, start_at - time.time()))  # all workers hit the store together
log_metric, log_params = retrying(mlflow.log_metric), retrying(mlflow.log_params)
for r in range(runs):
    with tracked_run("concurrency", f"w{worker}-r{r}", {"worker": str(worker)}):
        log_params({"worker": worker, "run": r, "lr": 0.001})
        for step in range(steps):
            for i, key in enumerate(keys):
                log_metric(key, worker * 1000 + r * 100 + step + i / 10, step=step)
"""


def run_workers(cwd) -> None:
    start_at = time.time() + 8  # about when every worker has imported MLflow and torch
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(w), str(RUNS), str(STEPS),
                               str(start_at), ",".join(KEYS)],
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
