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
from benchbio.training import VAL_CPU_SECONDS, VAL_SECONDS, RunConfig, augment, run

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
                 "val_every", "workers", "amp", "channels_last", "compile"):
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
        img, inst, _, _ = augment(Sample("x", image, labels), 32, (0.8, 1.25), rng)
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


def test_augment_returns_the_crops_position_in_its_image():
    from benchbio.data import Sample

    image = np.arange(40 * 50, dtype=np.float32).reshape(1, 40, 50)
    labels = np.ones((40, 50), int)
    rng = np.random.default_rng(0)
    flips = set()
    for _ in range(12):
        img, _, _, (y0, x0) = augment(Sample("x", image, labels), 16, (1.0, 1.0), rng)
        flipped = img[0, 0, 0] > img[0, 0, 1]
        whole = image[..., ::-1] if flipped else image  # a flip mirrors the whole image
        assert np.array_equal(img, whole[:, y0:y0 + 16, x0:x0 + 16])
        flips.add(bool(flipped))
    assert flips == {True, False}


def test_crop_targets_are_the_whole_image_targets_at_the_crop():
    # An object wholly inside the crop has the same harmonic target as in the whole
    # image: the crop's targets use the guide maps at the crop's true position.
    from benchbio.data import Sample
    from benchbio.guides import Guides
    from benchbio.methods.harmonic import expand_targets, harmonic_targets
    from benchbio.training import CropDataset, collate_crops

    labels = np.zeros((48, 48), int)
    labels[20:28, 18:30] = 1
    method = METHODS.create("harmonic", n_guides=2)
    method.load_state({"guides": Guides(np.array([[9.0, 0, 0.3], [0, 7.0, 1.0]]), 48.0, 48.0)
                       .to_json()})
    image = np.arange(48 * 48, dtype=np.float32).reshape(1, 48, 48)
    crops = CropDataset([Sample("x", image, labels)], method, 32, (1.0, 1.0), seed=0,
                        use_fg=False)
    checked = 0
    for epoch in range(8):
        crops.epoch = epoch
        item = crops[0]
        dense = expand_targets(collate_crops([item]))["embedding"][0]
        y0, x0 = (int(v) for v in item["origin"])
        flipped = bool(item["image"][0, 0, 0] > item["image"][0, 0, 1])
        whole = labels[:, ::-1] if flipped else labels
        inside = whole[y0:y0 + 32, x0:x0 + 32] > 0
        if inside.sum() == labels.sum():  # the object lies wholly in the crop
            expected = harmonic_targets(method.guides, whole, None)["embedding"]
            expected = expected[:, y0:y0 + 32, x0:x0 + 32]
            assert np.allclose(dense.numpy()[:, inside], expected[:, inside], atol=1e-5)
            checked += 1
    assert checked


def test_training_places_position_maps_at_each_crops_origin(monkeypatch, tmp_path):
    import contextlib

    import benchbio.acceleration as acceleration
    import benchbio.training as training

    seen = []
    real = acceleration.position_origins

    @contextlib.contextmanager
    def recording(model, origins):
        seen.append(origins.clone())
        with real(model, origins):
            yield

    monkeypatch.setattr(acceleration, "position_origins", recording)
    monkeypatch.setenv("BENCHBIO_CACHE", str(tmp_path))
    config = tiny_config()
    config.crop_size = 16
    method, dataset = training.build(config)
    training.train(config, method, dataset, tmp_path)
    assert seen and all(o.shape == (2, 2) for o in seen)
    assert any((o > 0).any() for o in seen)  # 16 px crops of 32 px images move


def _figures(config: RunConfig, tmp_path) -> list[tuple[str, float, int]]:
    from benchbio.registry import DATASETS
    from benchbio.training import train

    figures = []
    dataset = DATASETS.create(config.dataset, **config.dataset_options)
    method = METHODS.create(config.method, **config.method_options)
    train(config, method, dataset, tmp_path, lambda k, v, s: figures.append((k, v, s)))
    return figures


def test_persistent_workers_see_each_epoch(tmp_path):
    """Loader workers live for the whole run; each epoch's crops still reach them (keys
    carry the epoch), so the figures equal those of the main-process loader."""
    config = dataclasses.replace(tiny_config(), epochs=3, crop_size=24)
    inline = _figures(config, tmp_path / "a")
    workers = _figures(dataclasses.replace(config, workers=2), tmp_path / "b")

    def epochs(figures):  # the second run finds the guide search cached; seconds differ
        return [f for f in figures if not f[0].startswith("guide")
                and f[0] not in (VAL_SECONDS, VAL_CPU_SECONDS)]

    assert [k for k, *_ in epochs(inline)].count("train_loss") == 3
    assert epochs(workers) == epochs(inline)


def test_bf16_autocast_and_channels_last_on_cpu_are_logged(tmp_path):
    result = run(dataclasses.replace(tiny_config(), epochs=1, amp="bf16", channels_last="on"))
    r = mlflow.get_run(result.run_id)
    assert r.data.params["amp"] == "bf16" and r.data.params["channels_last"] == "on"
    assert r.data.params["compile"] == "False"
    assert r.data.tags["accel.amp_dtype"] == "bfloat16"
    assert r.data.tags["accel.channels_last"] == "True"
    assert r.data.tags["accel.pin_memory"] == "False"
    assert np.isfinite(r.data.metrics["train_loss"])


def test_cpu_defaults_log_plain_float32():
    result = run(dataclasses.replace(tiny_config(), epochs=1))
    tags = mlflow.get_run(result.run_id).data.tags
    assert tags["accel.amp_dtype"] == "float32" and tags["accel.channels_last"] == "False"
    assert tags["accel.grad_scaler"] == "False" and tags["accel.compile"] == "False"


def test_fp16_or_a_bad_amp_on_cpu_is_exit_2():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(main, tiny_args() + ["--device", "cpu", "--amp", "fp16"])
    assert result.exit_code == 2
    assert "--amp fp16 needs a CUDA device" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, tiny_args() + ["--amp", "half"])
    assert result.exit_code == 2 and "half" in result.output


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


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_method_takes_the_crops_origin(name):
    # CropDataset calls targets(instances, fg, origin=...) for every method.
    import inspect

    method = METHODS.create(name)
    assert "origin" in inspect.signature(method.targets).parameters


def test_device_targets_run_once_per_batch_on_the_device(monkeypatch, tmp_path):
    """The training step gives each collated batch, already on the run's device, to the
    method's device_targets exactly once, and the loss receives what it returned (less
    image and origin)."""
    import benchbio.training as training

    monkeypatch.setenv("BENCHBIO_CACHE", str(tmp_path))
    config = tiny_config()  # 4 training images, batch 2, 2 epochs: 4 steps
    method, dataset = training.build(config)
    calls, seen_by_loss = [], []
    real_targets, real_loss = method.device_targets, method.loss

    def device_targets(batch):
        calls.append({k: v.device for k, v in batch.items()})
        return {**real_targets(batch), "added_on_device": torch.ones(len(batch["image"]))}

    def loss(output, targets):
        seen_by_loss.append(sorted(targets))
        return real_loss(output, {k: v for k, v in targets.items() if k != "added_on_device"})

    monkeypatch.setattr(method, "device_targets", device_targets)
    monkeypatch.setattr(method, "loss", loss)
    training.train(config, method, dataset, tmp_path)
    assert len(calls) == len(seen_by_loss) == 4
    assert all({"image", "origin"} <= set(c) for c in calls)
    assert all(d == torch.device("cpu") for c in calls for d in c.values())
    assert all("added_on_device" in keys and "image" not in keys and "origin" not in keys
               for keys in seen_by_loss)


def test_default_device_targets_leave_the_batch_unchanged():
    """A method that does not override the hook gets its batch back, the same object with
    the same tensors, so its training steps are what they were before the hook."""
    from benchbio.data import Sample
    from benchbio.method import Method
    from benchbio.training import CropDataset, collate_crops

    rng = np.random.default_rng(0)
    labels = np.zeros((24, 24), np.int64)
    labels[3:10, 3:12], labels[14:22, 8:20] = 1, 2
    samples = [Sample("a", rng.random((1, 24, 24)).astype(np.float32), labels)]
    checked = 0
    for name in METHODS.names():
        method = METHODS.create(name)
        if type(method).device_targets is not Method.device_targets:
            continue
        if name.startswith("harmonic"):
            continue  # its targets need fitted guides; the hook is the base class's anyway
        batch = collate_crops([CropDataset(samples, method, 16, (1.0, 1.0), 0, False)[0]])
        copy = {k: v.clone() for k, v in batch.items()}
        out = method.device_targets(batch)
        assert out is batch and all(torch.equal(batch[k], copy[k]) for k in copy)
        checked += 1
    assert checked >= 2
