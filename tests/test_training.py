"""The training loop, the evaluation path and `benchbio run` with MLflow tracking."""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchbio.cli import main
from benchbio.registry import METHODS
from benchbio.training import RunConfig, augment, run

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("fast_store")]

TINY_DATA = ["n_train=4", "n_val=1", "n_test=2", "size=32"]
TINY_METHOD = ["width=4", "kernel_size=3", "search_steps=5"]


def tiny_args(method: str = "harmonic", method_sets=TINY_METHOD) -> list[str]:
    args = ["run", "-m", method, "-d", "synthetic-cells", "--epochs", "2", "--crop-size", "32",
            "--batch-size", "2", "--lr", "1e-3"]
    for s in method_sets:
        args += ["--set", s]
    for s in TINY_DATA:
        args += ["--data-opt", s]
    return args


def tiny_config(**kw) -> RunConfig:
    def opts(items):
        return {k: int(v) for k, v in (s.split("=") for s in items)}

    return RunConfig(method="harmonic", dataset="synthetic-cells", epochs=2, batch_size=2,
                     lr=1e-3, crop_size=32, device="cpu", method_options=opts(TINY_METHOD),
                     dataset_options=opts(TINY_DATA), **kw)


def test_run_leaves_a_complete_mlflow_run():
    result = CliRunner().invoke(main, tiny_args())
    assert result.exit_code == 0, result.output
    assert "sbd" in result.output
    runs = mlflow.search_runs(experiment_names=["synthetic-cells"], output_format="list")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED"
    tags = r.data.tags
    for key in ("method", "dataset", "seed", "device", "git_commit"):
        assert key in tags
    assert tags["method"] == "harmonic" and tags["device"] == "cpu"
    params = r.data.params
    assert params["epochs"] == "2" and params["method_options.n_guides"] == "12"
    assert params["dataset_options.size"] == "32" and params["method_options.width"] == "4"
    client = mlflow.tracking.MlflowClient()
    assert len(client.get_metric_history(r.info.run_id, "train_loss")) == 2
    assert "val_sbd" in r.data.metrics and "test_sbd" in r.data.metrics
    assert {"guide_hinge_before", "guide_hinge_after", "guide_separated_before",
            "guide_separated_after"} <= set(r.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(r.info.run_id, "method")}
    artifacts |= {a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")}
    assert {"config.json", "test_overlay.png", "method/guides.json", "method/guides.png",
            "checkpoint/best.pt"} <= artifacts


def test_cpu_runs_are_deterministic():
    first = run(tiny_config(), track=False)
    second = run(tiny_config(), track=False)
    assert first.test == second.test
    assert first.best_epoch == second.best_epoch
    assert first.checkpoint is None  # untracked: its files went with its temporary folder


def test_the_result_names_a_checkpoint_that_exists_after_the_run(tmp_path):
    from benchbio.inference import load_checkpoint

    result = run(dataclasses.replace(tiny_config(), epochs=1))
    assert result.checkpoint == f"runs:/{result.run_id}/checkpoint/best.pt"
    local = mlflow.artifacts.download_artifacts(result.checkpoint, dst_path=str(tmp_path))
    assert load_checkpoint(local, "cpu").method.name == "harmonic"


def test_a_run_logged_to_a_file_prints_one_line_per_epoch():
    """Output redirected to a file (CliRunner's stdout is no terminal) shows progress."""
    args = tiny_args() + ["--no-track"]
    args[args.index("--epochs") + 1] = "1"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert line.startswith("epoch 1/1: train_loss ") and "val_sbd" in line
    assert "elapsed 0:" in line and "remaining ~0:00:00" in line


def test_the_command_line_defaults_are_run_config_defaults():
    from benchbio.commands.run import command
    from benchbio.state import LR_SCHEDULES

    defaults = {p.name: p.default for p in command.params}
    for name in ("epochs", "batch_size", "lr", "lr_schedule", "crop_size", "seed", "device",
                 "val_every", "workers"):
        assert defaults[name] == getattr(RunConfig("m", "d"), name), name
    schedule = next(p for p in command.params if p.name == "lr_schedule")
    assert list(schedule.type.choices) == list(LR_SCHEDULES)


def test_augment_keeps_image_and_instances_aligned():
    from benchbio.data import Sample

    labels = np.zeros((40, 50), int)
    labels[5:15, 10:30] = 3
    image = (labels > 0).astype(np.float32)[None]
    rng = np.random.default_rng(0)
    for _ in range(5):
        img, inst, _ = augment(Sample("x", image, labels), 32, (0.8, 1.25), rng)
        assert img.shape == (1, 32, 32) and inst.shape == (32, 32)
        assert np.array_equal(img[0] > 0.5, inst > 0)


def test_tile_scoring_keeps_every_object_of_a_tile_without_background():
    from benchbio.data import Sample
    from benchbio.instances import Prediction
    from benchbio.training import evaluate_samples

    gt = np.zeros((8, 16), int)
    gt[:4, :8] = 3  # the left tile is covered by objects 3 and 5
    gt[4:, :8] = 5
    gt[2:5, 10:14] = 6
    sample = Sample("img", np.zeros((1, 8, 16), np.float32), gt)
    pred = np.where(gt == 3, 0, gt)  # object 3 missed, the others exact
    result = evaluate_samples([Prediction(pred, {5: 0.9, 6: 0.8})], [sample], ["sbd", "dic"],
                              eval_tile=8)
    left = result.per_image["img@0_0"]
    assert left["sbd"] == pytest.approx(0.5) and left["dic"] == -1  # 2 true objects, 1 found
    assert result.per_image["img@0_8"]["sbd"] == 1.0


def test_cuda_asked_without_gpu_is_exit_2():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(main, tiny_args() + ["--device", "cuda"])
    assert result.exit_code == 2
    assert "no CUDA device" in result.output and "Traceback" not in result.output


def test_unreachable_tracking_server_is_exit_2(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    result = CliRunner().invoke(main, tiny_args())
    assert result.exit_code == 2
    assert "cannot reach the MLflow tracking server" in result.output


def test_unknown_dataset_and_bad_set_are_exit_2():
    result = CliRunner().invoke(main, ["run", "-m", "harmonic", "-d", "nope"])
    assert result.exit_code == 2 and "available datasets" in result.output
    result = CliRunner().invoke(main, tiny_args(method_sets=["width"]))
    assert result.exit_code == 2 and "key=value" in result.output


def test_nan_loss_marks_run_failed_with_reason():
    from benchbio.methods.harmonic import Harmonic

    class NanLoss(Harmonic):
        name = "test-nan"

        def loss(self, output, targets):
            return output.sum() * float("nan")

    METHODS.register("test-nan")(lambda **kw: NanLoss(**kw))
    try:
        result = CliRunner().invoke(main, tiny_args("test-nan"))
    finally:
        METHODS.unregister("test-nan")
    assert result.exit_code == 2
    assert "loss became nan" in result.output
    r = mlflow.search_runs(experiment_names=["synthetic-cells"], output_format="list")[0]
    assert r.info.status == "FAILED"
    assert "loss became nan" in r.data.tags["failure_reason"]
