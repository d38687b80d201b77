"""Shared fixtures: the real data beside the checkout, and an isolated environment."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$BENCHBIO_SHARED_DATA``."""
    env = os.environ.get("BENCHBIO_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real datasets; the test is skipped, with the reason, where they are absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set BENCHBIO_SHARED_DATA to run this test)")
    return path


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Each test gets its own cache and MLflow store, never the user's."""
    base = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("BENCHBIO_CACHE", str(base / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("BENCHBIO_DATA", raising=False)
    # checkpoints of runs on a remote store go to the user data dir (platformdirs)
    monkeypatch.setenv("XDG_DATA_HOME", str(base / "data-home"))
    monkeypatch.delenv("BENCHBIO_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    import torch

    threads = torch.get_num_threads()
    yield
    _forget_mlflow_state()
    # a benchmark main() or a sweep cell run in-process sets torch's thread count; a
    # later test would then sum losses in another order than its subprocesses do
    torch.set_num_threads(threads)


def _forget_mlflow_state() -> None:
    """MLflow keeps the active run and experiment in module globals (and the experiment
    id in the environment): reset them so no test inherits another's experiment."""
    import sys

    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is None:
        return
    while fluent.active_run() is not None:
        fluent.end_run()
    fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture(scope="session")
def _empty_store_template(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables created once (MLflow's migrations take
    seconds per fresh file on a busy 2-core machine, a copy takes milliseconds)."""
    import mlflow

    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
        mlflow.MlflowClient().search_experiments()
    return path


@pytest.fixture
def fast_store(_isolated_env, _empty_store_template) -> str:
    """This test's own MLflow store (as ``_isolated_env``), pre-created from a template."""
    import shutil

    uri = os.environ["MLFLOW_TRACKING_URI"]
    shutil.copyfile(_empty_store_template, uri.removeprefix("sqlite:///"))
    return uri


def train_steps(method, images, instances, steps: int = 10, fg=None) -> list[float]:
    """Losses of ``steps`` Adam steps of a method's own model on fixed crops.

    Uses only the method's hooks (build_model, targets, device_targets, loss), so a test
    can check that a method learns without the harness.
    """
    import numpy as np
    import torch

    model = method.build_model(images[0].shape[0])
    x = torch.from_numpy(np.stack(images))
    from benchbio.training import collate_crops

    per_crop = [method.targets(inst, fg) for inst in instances]
    targets = method.device_targets(collate_crops(
        [{k: torch.from_numpy(np.asarray(v)) for k, v in d.items()} for d in per_crop]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = method.loss(model(x), targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch, _empty_store_template):
    """A real MLflow tracking server on 127.0.0.1 (free port, own sqlite store and
    artifact root), with ``MLFLOW_TRACKING_URI`` pointing at it; stopped afterwards.
    Its store starts as a copy of the pre-migrated template, so it starts in seconds."""
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    shutil.copyfile(_empty_store_template, tmp_path / "server.db")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "mlflow-server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        start_new_session=True,  # the server and its workers form one group, stopped together
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    raise RuntimeError(
                        "mlflow server did not start: "
                        + (tmp_path / "mlflow-server.log").read_text(errors="replace")[-2000:]
                    ) from None
                time.sleep(0.25)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri
    finally:
        import signal

        for sig in (signal.SIGTERM, signal.SIGKILL):  # KILL: stragglers that outlive TERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        log.close()


#: Small values for option fields that set a run's size, by field name: a test gives a
#: plugin those of its fields its Options dataclass has (no list of plugin names).
TINY_VALUES = {"width": 4, "kernel_size": 3, "search_steps": 5, "patch_size": 5, "n_train": 2,
               "n_val": 1, "n_test": 1, "size": 32}


def tiny_options(options_type: type) -> dict:
    """The :data:`TINY_VALUES` of the fields the options dataclass ``options_type`` has."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(options_type)}
    return {k: v for k, v in TINY_VALUES.items() if k in fields}


def tiny_untrained_harmonic(size: float, in_channels: int):
    """``(method, model)``: harmonic with 4 random guides over a ``size``-pixel image,
    width 4, 3x3 kernels, its network untrained (seed 0): a checkpoint's contents."""
    import numpy as np
    import torch

    import benchbio
    from benchbio.guides import Guides

    rng = np.random.default_rng(0)
    guides = Guides(np.c_[rng.uniform(-20, 20, (4, 2)), rng.uniform(0, 3, 4)], size, size)
    method = benchbio.create_method("harmonic", n_guides=4, width=4, kernel_size=3)
    method.load_state({"guides": guides.to_json()})
    torch.manual_seed(0)
    return method, method.build_model(in_channels)


def bench_dataloader_report(tmp_path, *methods: str) -> str:
    """The text ``benchmarks/bench_dataloader.py`` writes for ``methods`` on tiny
    synthetic crops, with the pre-issue-17 reference path beside them."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_dataloader

    out = tmp_path / "dataloader.md"
    assert bench_dataloader.main([
        "--dataset", "synthetic-cells", "--size", "48", "--crop", "32", "--images", "2",
        "--samples", "2", "--batch", "2", "--rounds", "1", "--reference",
        "--methods", *methods, "--out", str(out)]) == 0
    return out.read_text()
