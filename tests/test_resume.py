"""Runs that survive: per-epoch checkpoints, resume after SIGKILL, graceful SIGTERM /
SIGINT, NaN loss with the last good checkpoint kept, and the refusals of --resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchbio.checkpoint import (
    CHECKPOINT_TAG,
    LAST,
    GracefulStop,
    is_locked,
    read_checkpoint,
    run_lock,
    save_atomic,
)
from benchbio.cli import main
from benchbio.errors import BenchbioError
from benchbio.methods.harmonic import Harmonic
from benchbio.registry import METHODS
from benchbio.state import make_scheduler
from benchbio.training import RunConfig, run

CLOCKS = ("elapsed", "cpu_elapsed")  # clocks run on between a save and its reload

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("fast_store")]

EPOCHS = 3
#: 4 training images in batches of 2: two batches per epoch.
TINY = ["-d", "synthetic-cells", "--epochs", str(EPOCHS), "--crop-size", "32",
        "--batch-size", "2", "--lr", "1e-3", "--device", "cpu",
        "--set", "width=4", "--set", "kernel_size=3", "--set", "search_steps=5",
        "--data-opt", "n_train=4", "--data-opt", "n_val=1", "--data-opt", "n_test=2",
        "--data-opt", "size=32"]
COMPARED = ("train_loss", "lr", "val_sbd", "test_sbd", "test_abs_dic", "test_fg_bg_dice",
            "best_epoch")


def histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every compared metric of a run as sorted (step, value) pairs, duplicates kept."""
    client = mlflow.MlflowClient()
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in COMPARED}


def only_run(status: str | None = None):
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1, [r.info.status for r in runs]
    if status:
        assert runs[0].info.status == status, runs[0].data.tags.get("failure_reason")
    return runs[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, _empty_store_template) -> dict[str, list[tuple[int, float]]]:
    """The metrics of the tiny run trained without interruption (own store and cache)."""
    base = tmp_path_factory.mktemp("reference")
    shutil.copyfile(_empty_store_template, base / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
        mp.setenv("BENCHBIO_CACHE", str(base / "cache"))
        mp.chdir(base)
        result = CliRunner().invoke(main, ["run", "-m", "harmonic", *TINY])
        assert result.exit_code == 0, result.output
        run = only_run("FINISHED")
        ref = histories(run.info.run_id)
    assert len(ref["train_loss"]) == EPOCHS and len(ref["val_sbd"]) == EPOCHS
    return ref


class _Trip(Harmonic):
    """Harmonic whose loss does something unusual at one chosen batch (for the tests)."""

    name = "test-trip"
    at_call: int | None = None  # 0-based count of loss calls
    action = None
    calls = 0

    def loss(self, output, targets):
        loss = super().loss(output, targets)
        calls, type(self).calls = type(self).calls, type(self).calls + 1
        if calls == type(self).at_call and type(self).action is not None:
            return type(self).action(loss)
        return loss


@pytest.fixture
def trip(monkeypatch, tmp_path):
    """Register ``test-trip``; run from a scratch folder so artifacts land there."""
    monkeypatch.chdir(tmp_path)
    METHODS.register("test-trip")(lambda **kw: _Trip(**kw))
    _Trip.calls, _Trip.at_call, _Trip.action = 0, None, None
    yield _Trip
    METHODS.unregister("test-trip")


def _raise_signal(sig):
    def action(loss):
        signal.raise_signal(sig)
        return loss

    return action


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_epoch_saves_checkpoint_marks_killed_and_resume_is_identical(
    reference, trip, sig, code
):
    trip.at_call, trip.action = 2, _raise_signal(sig)  # epoch 1, first of two batches
    result = CliRunner().invoke(main, ["run", "-m", "test-trip", *TINY])
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output
    assert lines[-1].startswith(f"benchbio: error: stopped by {sig.name} at epoch 1, batch 1")
    assert "--resume" in lines[-1]
    run = only_run("KILLED")
    assert f"stopped by {sig.name}" in run.data.tags["failure_reason"]
    folder = Path(run.data.tags[CHECKPOINT_TAG])
    state = read_checkpoint(folder / LAST)
    assert (state["progress"]["epoch"], state["progress"]["batch"]) == (1, 1)
    assert signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL)
    if sig == signal.SIGINT:
        return  # the same path as SIGTERM from here on; resumed once, below

    trip.action = None
    result = CliRunner().invoke(main, ["run", "--resume", run.info.run_id])
    assert result.exit_code == 0, result.output
    run = only_run("FINISHED")
    assert histories(run.info.run_id) == reference  # bit for bit, each step logged once
    assert sorted(p.name for p in folder.iterdir()) == ["lock", "run.json"]  # released
    assert "failure_reason" not in run.data.tags
    assert run.data.tags["resumes"] == "1"
    assert f"stopped by {sig.name}" in run.data.tags["previous_failure_reason"]


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_gives_identical_metrics(reference, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpts = tmp_path / "ckpts"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchbio.cli", "run", "-m", "harmonic", *TINY,
         "--checkpoint-dir", str(ckpts)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    try:
        while True:  # wait for the checkpoint of epoch 0, then kill -9
            found = list(ckpts.glob(f"*/{LAST}"))
            if found and read_checkpoint(found[0])["progress"]["epoch"] >= 1:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    run = only_run("RUNNING")  # SIGKILL leaves no chance to say anything
    assert Path(run.data.tags[CHECKPOINT_TAG]) == found[0].parent
    assert not is_locked(found[0].parent)  # the dead process's lock is gone

    result = CliRunner().invoke(main, ["run", "--resume", "last"])
    assert result.exit_code == 0, result.output
    run = only_run("FINISHED")
    assert histories(run.info.run_id) == reference


@pytest.mark.slow
def test_nan_loss_fails_keeps_last_good_checkpoint_and_resumes(reference, trip):
    trip.at_call, trip.action = 4, lambda loss: loss * float("nan")  # epoch 2
    result = CliRunner().invoke(main, ["run", "-m", "test-trip", *TINY])
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()[-1]
    assert "loss became nan at epoch 2, batch 0" in message and "Traceback" not in result.output
    run = only_run("FAILED")
    assert "loss became nan" in run.data.tags["failure_reason"]
    folder = Path(run.data.tags[CHECKPOINT_TAG])
    assert read_checkpoint(folder / LAST)["progress"]["epoch"] == 2
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")) == 2

    trip.action = None  # the cause is fixed
    result = CliRunner().invoke(main, ["run", "--resume", run.info.run_id])
    assert result.exit_code == 0, result.output
    assert histories(only_run("FINISHED").info.run_id) == reference


@pytest.mark.slow
def test_resume_before_the_first_checkpoint_restarts_in_the_same_run(reference, trip):
    def broken_fit(self, train, *, seed, log=None):
        Harmonic.fit(self, train, seed=seed, log=log)  # logs the guide search figures
        raise RuntimeError("out of memory")

    _Trip.fit = broken_fit
    try:
        result = CliRunner().invoke(main, ["run", "-m", "test-trip", *TINY])
    finally:
        del _Trip.fit
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    run = only_run("FAILED")
    assert run.data.tags["failure_reason"] == "RuntimeError: out of memory"
    assert not (Path(run.data.tags[CHECKPOINT_TAG]) / LAST).exists()
    guide_keys = [k for k in run.data.metrics if k.startswith("guide_search")]
    assert guide_keys

    result = CliRunner().invoke(main, ["run", "--resume", run.info.run_id])
    assert result.exit_code == 0, result.output
    run = only_run("FINISHED")
    assert histories(run.info.run_id) == reference
    client = mlflow.MlflowClient()
    for key in guide_keys:  # logged by both attempts' guide search, kept once per step
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps))


def _killed_run(trip) -> str:
    trip.at_call, trip.action = 0, _raise_signal(signal.SIGTERM)
    result = CliRunner().invoke(main, ["run", "-m", "test-trip", *TINY])
    assert result.exit_code == 143, result.output
    trip.action = None
    return only_run("KILLED").info.run_id


def test_resume_refuses_a_different_configuration(trip):
    run_id = _killed_run(trip)
    result = CliRunner().invoke(main, ["run", "--resume", run_id, "--lr", "0.5"])
    assert result.exit_code == 2
    assert f"cannot resume run {run_id} with a different configuration (lr 0.001 -> 0.5)" \
        in result.output
    result = CliRunner().invoke(main, ["run", "--resume", run_id, "--set", "width=8"])
    assert result.exit_code == 2 and "method_options.width 4 -> 8" in result.output
    assert only_run("KILLED")


def test_resume_refuses_a_live_run_and_last_skips_it(trip):
    run_id = _killed_run(trip)
    folder = Path(only_run().data.tags[CHECKPOINT_TAG])
    with run_lock(folder, run_id):  # as if another process were training it
        assert is_locked(folder)
        result = CliRunner().invoke(main, ["run", "--resume", run_id])
        assert result.exit_code == 2 and "still being trained by another process" in result.output
        result = CliRunner().invoke(main, ["run", "--resume", "last"])
        assert result.exit_code == 2 and "no unfinished benchbio run" in result.output
    assert only_run("KILLED")


def test_resume_of_unknown_or_finished_runs_is_one_line():
    result = CliRunner().invoke(main, ["run", "--resume", "0123456789abcdef"])
    assert result.exit_code == 2 and "no run '0123456789abcdef'" in result.output
    result = CliRunner().invoke(main, ["run", "--resume", "last"])
    assert result.exit_code == 2 and "no unfinished benchbio run to resume" in result.output
    result = CliRunner().invoke(main, ["run", "--epochs", "2"])
    assert result.exit_code == 2 and "--method and --dataset are required" in result.output
    with pytest.raises(BenchbioError, match="drop --no-track"):
        run(RunConfig(method="harmonic", dataset="synthetic-cells"), track=False, resume="last")


def test_atomic_save_keeps_the_previous_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / LAST
    save_atomic(path, {"epoch": 1})

    def broken(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_atomic(path, {"epoch": 2})
    assert read_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == [LAST]  # no temporary file left


def test_graceful_stop_defers_the_signal_and_chains_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with GracefulStop() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)
            assert stop.signum == signal.SIGUSR2 and seen == []  # deferred, not lost
            stop.chain()  # what run() does after saving: submitit's handler would requeue
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_second_signal_stops_at_once():
    with GracefulStop() as stop, pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_the_process_ignores_stays_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job or under nohup
    with GracefulStop() as stop:
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.01)
        assert stop.signum is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.fixture(autouse=True)
def _python_sigint_handler():
    """Tests start from Python's own SIGINT handler, whatever the test runner inherited
    (a background job's shell starts it with SIGINT ignored), and leave it as it was."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_lr_schedules_step_per_batch_and_restore(schedule):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=0.1)
    sched = make_scheduler(opt, schedule, total_steps=10)
    lrs = []
    for _ in range(10):  # the rate each of 10 batches uses
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if schedule == "constant":
        assert lrs == [0.1] * 10
    elif schedule == "cosine":
        assert lrs[0] == 0.1 and lrs[-1] < 0.003 and lrs == sorted(lrs, reverse=True)
    else:
        assert max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[-1] < 1e-4
    again = make_scheduler(torch.optim.Adam([param], lr=0.1), schedule, total_steps=10)
    again.load_state_dict(sched.state_dict())
    assert again.state_dict() == sched.state_dict()


def test_checkpoint_folder_is_found_from_the_run(tmp_path, monkeypatch):
    from benchbio.checkpoint import checkpoint_folder

    beside = tmp_path / "mlruns" / "1" / "abc" / "checkpoints"
    local = tmp_path / "mlruns" / "1" / "abc" / "artifacts"
    assert checkpoint_folder("abc", f"file://{local}", None) == beside
    assert checkpoint_folder("abc", str(local), None) == beside
    remote = checkpoint_folder("abc", "mlflow-artifacts:/1/abc/artifacts", None)
    assert remote == Path(os.environ["XDG_DATA_HOME"]) / "benchbio" / "checkpoints" / "abc"
    assert checkpoint_folder("abc", str(local), tmp_path / "ck") == tmp_path / "ck" / "abc"
    monkeypatch.setenv("BENCHBIO_CHECKPOINT_DIR", str(tmp_path / "env"))
    assert checkpoint_folder("abc", str(local), None) == tmp_path / "env" / "abc"


class PreemptibleJob:
    """A submitit job running one benchbio run, requeued on pre-emption with
    ``resume=<its run id>`` (the contract that ``benchbio.sweep.CellJob`` follows)."""

    def __call__(self, config: RunConfig, folder: str, resume: str | None = None):
        (Path(folder) / "job.pid").write_text(str(os.getpid()))
        return run(config, resume=resume, checkpoint_dir=folder,
                   on_start=lambda run_id: setattr(self, "run_id", run_id))

    def checkpoint(self, config: RunConfig, folder: str, resume: str | None = None):
        import submitit

        return submitit.helpers.DelayedSubmission(self, config, folder, resume=self.run_id)


@pytest.mark.slow
def test_preempted_submitit_job_is_requeued_and_resumes_its_run(reference, tmp_path,
                                                                 monkeypatch):
    import submitit

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    config = RunConfig(method="harmonic", dataset="synthetic-cells", epochs=EPOCHS,
                       batch_size=2, lr=1e-3, crop_size=32, device="cpu",
                       method_options={"width": 4, "kernel_size": 3, "search_steps": 5},
                       dataset_options={"n_train": 4, "n_val": 1, "n_test": 2, "size": 32})
    executor = submitit.LocalExecutor(tmp_path / "jobs")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(PreemptibleJob(), config, str(ckpts))
    deadline = time.time() + 120
    while not list(ckpts.glob(f"*/{LAST}")):
        assert job.state not in ("FINISHED", "FAILED"), job.stderr()
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    os.kill(int((ckpts / "job.pid").read_text()), signal.SIGUSR2)  # SLURM's pre-emption notice
    result = job.result()
    run = only_run("FINISHED")
    assert result.run_id == run.info.run_id
    assert run.data.tags["resumes"] == "1"
    assert "stopped by SIGUSR2" in run.data.tags["previous_failure_reason"]
    assert histories(run.info.run_id) == reference
    assert "Requeued job" in job.stdout()


def test_train_state_round_trips_everything_it_saves():
    """What TrainState.state_dict saves, load_state_dict restores (one place for both)."""
    from benchbio.guides import Guides
    from benchbio.state import TrainState

    method = METHODS.create("harmonic", width=4, kernel_size=3, n_guides=2)
    guides = Guides(np.array([[1.0, 2.0, 0.5], [3.0, -1.0, 1.0]]), 32.0, 32.0)
    method.load_state({"guides": guides.to_json()})

    def fresh(seed):
        torch.manual_seed(seed)
        return TrainState.create(method, 1, torch.device("cpu"), lr=1e-2, schedule="cosine",
                                 total_steps=10, seed=seed)

    state = fresh(0)
    loss = state.model(torch.rand(2, 1, 32, 32)).square().mean()
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    torch.randperm(5, generator=state.order_generator)
    state.progress.epoch, state.progress.best_val, state.progress.metrics = 3, 0.5, [("x", 1.0, 2)]
    saved = state.state_dict()
    other = fresh(1)
    other.load_state_dict(saved)
    again = other.state_dict()
    assert again.keys() == saved.keys()
    for key in ("model", "optimizer", "scheduler", "scaler", "order_generator", "rng",
                "method_state"):
        assert _same(again[key], saved[key]), key
    assert {k: v for k, v in again["progress"].items() if k not in CLOCKS} == \
        {k: v for k, v in saved["progress"].items() if k not in CLOCKS}


def _same(a, b) -> bool:
    """Equal nested state (tensors and arrays compared by value)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b
