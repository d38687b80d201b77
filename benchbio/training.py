"""The one training loop and the one evaluation path that serve every method.

:func:`run` is what ``benchbio run`` does: check everything that can be checked, fit the
method's prior (e.g. guide search), train on random augmented crops of the train split,
keep the checkpoint that scores best on the validation split, score the test split with
the dataset's metrics, and log all of it to one MLflow run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from .acceleration import (
    AMP_MODES,
    SWITCH_MODES,
    Acceleration,
    forward_loss,
    optimizer_step,
    resolve_acceleration,
)
from .checkpoint import (
    CHECKPOINT_TAG,
    LAST,
    RUN_CONFIG,
    GracefulStop,
    RunInterrupted,
    check_writable,
    checkpoint_folder,
    read_checkpoint,
    run_lock,
    save_atomic,
    write_json_atomic,
)
from .data import InstanceDataset, Sample
from .errors import BenchbioError, DataError
from .inference import Predictor, predict_image
from .instances import Prediction, as_prediction, crop_instances, is_stack
from .method import LogFn, Method
from .nets import divisor_of
from .progress import ProgressLines
from .registry import DATASETS, METHODS
from .runtime import device_name, resolve_device, seed_everything
from .state import TrainState, check_lr_schedule

__all__ = [
    "RunConfig",
    "RunResult",
    "CropDataset",
    "collate_crops",
    "predict_samples",
    "evaluate_samples",
    "Trainer",
    "VAL_SECONDS",
    "VAL_CPU_SECONDS",
    "train",
    "preflight",
    "resume_config",
    "run",
]


@dataclass
class RunConfig:
    """Everything that defines a run; logged to MLflow as params."""

    method: str
    dataset: str
    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    lr_schedule: str = "constant"
    crop_size: int = 448
    scale: tuple[float, float] = (0.8, 1.25)
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    experiment: str | None = None
    val_every: int = 1
    workers: int = 0
    amp: str = "auto"  # auto (bf16, else fp16, on a GPU; off on the CPU), off, bf16, fp16
    channels_last: str = "auto"  # auto (on for a GPU), on, off
    compile: bool = False  # torch.compile the training forward pass
    method_options: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """What a run produced: its MLflow id, test figures and best validation score."""

    run_id: str | None
    test: dict[str, float]
    per_image: dict[str, dict[str, float]]
    best_val: float
    best_epoch: int
    seconds: float
    #: Where the best validation weights are once :func:`run` returns: the MLflow artifact
    #: ``runs:/<run id>/checkpoint/best.pt`` (load it with
    #: :func:`benchbio.inference.load_run`); None for an untracked run, whose files are
    #: deleted with its temporary folder.
    checkpoint: str | None = None


# ---------------------------------------------------------------------------- data
def _resize(arr: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(arr)).float()[None]
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest-exact")[0].numpy()
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].numpy()


@functools.lru_cache(maxsize=64)
def _nearest_source(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output index of a ``nearest-exact`` resize along one axis,
    read off torch's own resize of an index ramp (so it is torch's rounding exactly)."""
    ramp = torch.arange(size_in, dtype=torch.float32)[None, None, :, None]
    out = F.interpolate(ramp, size=(size_out, 1), mode="nearest-exact")
    return out[0, 0, :, 0].numpy().astype(np.int64)


def _window(index: np.ndarray, pad: int, start: int, crop: int) -> np.ndarray:
    """Source indices of a crop window along one axis; -1 where it falls in the padding."""
    return np.concatenate([index, np.full(pad, -1, np.int64)])[start:start + crop]


def _gather(arr: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``arr[..., rows, :][..., cols]``, zero (background, False) where an index is -1."""
    out = arr[..., np.maximum(rows, 0)[:, None], np.maximum(cols, 0)[None, :]]
    if (rows < 0).any() or (cols < 0).any():
        out[..., (rows < 0)[:, None] | (cols < 0)[None, :]] = 0
    return out


def augment(
    sample: Sample, crop: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Random rescale, random ``crop x crop`` window (zero padding if smaller), random
    left-right flip: the paper's augmentation. Returns (image, instances, fg, origin):
    ``origin`` is the crop's top-left pixel (row, col) in the rescaled (and, when
    flipped, mirrored) whole image, so that position maps and position-dependent
    targets see the crop where it lies, as whole-image prediction sees it.

    The image is resized bilinearly; masks and labels take the window's pixels of a
    ``nearest-exact`` resize directly (the source index of every window pixel), the same
    pixels as resizing the whole label image and cropping it, at a fraction of the cost.
    """
    image, instances, fg = sample.image, np.asarray(sample.instances), sample.fg
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    h, w = image.shape[1:]
    rows, cols = np.arange(h), np.arange(w)
    if abs(s - 1) > 1e-3:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        image = _resize(image, size, "bilinear").astype(np.float32, copy=False)
        rows, cols = _nearest_source(h, size[0]), _nearest_source(w, size[1])
        h, w = size
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)))
    y0, x0 = int(rng.integers(0, h + ph - crop + 1)), int(rng.integers(0, w + pw - crop + 1))
    image = image[:, y0:y0 + crop, x0:x0 + crop]
    rows, cols = _window(rows, ph, y0, crop), _window(cols, pw, x0, crop)
    instances = _gather(instances, rows, cols)
    if is_stack(instances):
        instances = instances[instances.any(axis=(1, 2))]
    fg = _gather(np.asarray(fg), rows, cols) if fg is not None else None
    if rng.random() < 0.5:  # = mirror the whole image, then take the mirrored window
        image, instances = image[..., ::-1], instances[..., ::-1]
        fg = fg[..., ::-1] if fg is not None else None
        x0 = w + pw - x0 - crop
    return np.ascontiguousarray(image), np.ascontiguousarray(instances), (
        np.ascontiguousarray(fg) if fg is not None else None
    ), (y0, x0)


class CropDataset(Dataset):
    """One random augmented crop of each training image per epoch, with the method's
    targets at the crop's position (``origin``, also in the item, for the network's
    position maps). Randomness comes from (seed, epoch, index), so runs are
    reproducible whatever the number of loader workers."""

    def __init__(
        self, samples: Sequence[Sample], method: Method, crop: int, scale: tuple[float, float],
        seed: int, use_fg: bool,
    ) -> None:
        self.samples = list(samples)  # loaded once, kept in memory
        self.method, self.crop, self.scale, self.seed = method, crop, scale, seed
        self.use_fg = use_fg
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """The crop of ``index`` in epoch :attr:`epoch`, or of ``(epoch, index)``: the
        form :class:`EpochBatches` gives, which reaches workers that persist across
        epochs (their copy of :attr:`epoch` is never updated)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        sample = self.samples[index]
        if sample.crowd is not None:
            sample = dataclasses.replace(sample, instances=sample.objects(), crowd=None)
        image, instances, fg, origin = augment(sample, self.crop, self.scale, rng)
        targets = self.method.targets(instances, fg if self.use_fg else None, origin=origin)
        return {"image": torch.from_numpy(image),
                "origin": torch.tensor(origin, dtype=torch.float32),
                **{k: torch.from_numpy(np.asarray(v)) for k, v in targets.items()}}


class EpochBatches:
    """The batch sampler of a run's one DataLoader: the batches of the current epoch
    (set before each epoch), as ``(epoch, index)`` keys of :class:`CropDataset`."""

    def __init__(self) -> None:
        self.epoch = 0
        self.batches: list[list[int]] = []

    def __iter__(self):
        for batch in self.batches:
            yield [(self.epoch, index) for index in batch]

    def __len__(self) -> int:
        return len(self.batches)


def collate_crops(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the crops' tensors into a batch (torch's ``default_collate``, which in a
    loader worker builds the batch in shared memory); a target whose length varies from
    crop to crop (e.g. a per-object table) is zero-padded at the end to the longest."""
    items = [dict(item) for item in items]
    for key, first in items[0].items():
        if first.dim() == 0:
            continue
        longest = max(item[key].shape[0] for item in items)
        for item in items:
            value = item[key]
            if value.shape[0] != longest:
                padded = value.new_zeros((longest, *value.shape[1:]))
                padded[: value.shape[0]] = value
                item[key] = padded
    return default_collate(items)


# ---------------------------------------------------------------------------- inference
def predict_samples(
    method: Method, model: torch.nn.Module, samples: Sequence[Sample], device: torch.device,
    *, fg_at_test: bool, min_area: int, desc: str = "predict",
) -> list[Prediction]:
    """Predictions (labels and instance scores) for every sample of a split, with a
    progress bar: the forward of
    :func:`benchbio.inference.forward_tiled` over the whole image as one window (what
    whole-image prediction computes), post-processed by the method."""
    in_channels = samples[0].image.shape[0] if len(samples) else 0
    predictor = Predictor(method, model, device, in_channels, min_area, fg_at_test)
    return [
        predict_image(predictor, s.image, s.fg if fg_at_test else None, tile=None)
        for s in tqdm(samples, desc=desc, leave=False, disable=None)
    ]


def _tiles(arr: np.ndarray, tile: int) -> list[tuple[str, np.ndarray]]:
    h, w = arr.shape[-2:]
    out = []
    for y in range(0, h - tile + 1, tile):
        for x in range(0, w - tile + 1, tile):
            out.append((f"{y}_{x}", crop_instances(arr, (slice(y, y + tile), slice(x, x + tile)))))
    return out


def evaluate_samples(
    preds: Sequence[Prediction | np.ndarray], samples: Sequence[Sample],
    metrics: Sequence[str], eval_tile: int | None = None,
):
    """Score predictions (with their instance scores) against the samples' instances.

    With ``eval_tile`` each image is cut into non-overlapping tiles that are scored as
    separate images (the E. coli protocol); a tile keeps every object, also where
    objects cover it completely (background is 0 inside the harness).
    """
    from .evaluation import background_zero, evaluate

    names, p_list, g_list, crowds = [], [], [], []
    for pred, s in zip(preds, samples, strict=True):
        if not isinstance(pred, Prediction) and not is_stack(np.asarray(pred)):
            pred = as_prediction(pred)
        if not eval_tile:
            names.append(s.name)
            p_list.append(pred)
            g_list.append(background_zero(s.instances)[0])
            crowds.append(s.crowd)
            continue
        labels = pred.labels if isinstance(pred, Prediction) else pred
        for (key, p), (_, g) in zip(_tiles(labels, eval_tile), _tiles(s.instances, eval_tile)):
            names.append(f"{s.name}@{key}")
            p_list.append(Prediction(p, pred.scores) if isinstance(pred, Prediction) else p)
            g_list.append(background_zero(g)[0])
            crowds.append(None)
    return evaluate(p_list, g_list, metrics=list(metrics), names=names, gt_crowd=crowds)


# ---------------------------------------------------------------------------- training
def _best_name(epoch: int) -> str:
    return f"best-epoch{epoch:04d}.pt"


#: Logged with every validation: seconds since the run's training began (the method's
#: fit, e.g. the guide search, and earlier validations included; summed over resumed
#: attempts). ``benchbio report`` draws validation scores against it.
VAL_SECONDS = "val_seconds"
#: Logged beside :data:`VAL_SECONDS`: CPU seconds of the training process so far
#: (:attr:`~benchbio.state.TrainState.cpu_elapsed`), a clock a loaded machine does not
#: stretch when the run uses one thread (``benchbio report --time-axis cpu``).
VAL_CPU_SECONDS = "val_cpu_seconds"


class Trainer:
    """What the steps of one run's training share: its :class:`~benchbio.state.TrainState`,
    the training crops, the device, the checkpoint folder, the figure logger and the stop
    request. :func:`train` drives it: :meth:`train_epoch`, :meth:`validate` when due,
    :meth:`end_epoch`, and :meth:`test` at the end (after torch-em's ``DefaultTrainer``:
    ``fit`` -> ``_train_epoch_impl`` / ``_validate_impl``)."""

    def __init__(
        self, config: RunConfig, dataset: InstanceDataset, state: TrainState,
        train_samples: Sequence[Sample], device: torch.device, checkpoints: Path, *,
        log: LogFn, stop: GracefulStop | None = None,
    ) -> None:
        self.config, self.dataset, self.state, self.device = config, dataset, state, device
        self.method, self.checkpoints, self.log, self.stop = state.method, checkpoints, log, stop
        divisor = divisor_of(state.model)
        crop = int(math.ceil(config.crop_size / divisor) * divisor)
        self.crops = CropDataset(train_samples, self.method, crop, config.scale, config.seed,
                                 dataset.fg_at_test)
        self.batch_size = min(config.batch_size, len(self.crops))
        self.steps_per_epoch = len(self.crops) // self.batch_size
        self.accel = state.accel
        self.batches = EpochBatches()
        self.loader = DataLoader(  # one loader: its workers (if any) live for the whole run
            self.crops, batch_sampler=self.batches, collate_fn=collate_crops,
            generator=torch.Generator().manual_seed(config.seed),
            **self.accel.loader_options(config.workers),
        )
        opts_area = self.method.opts.min_area
        self.min_area = opts_area if opts_area is not None else dataset.min_area
        self.val_metrics = [_metric_of(dataset.val_metric)]
        self.payload = {  # what every checkpoint holds besides the weights and the state
            "method": config.method,
            "method_options": self.method.options(),
            "dataset": config.dataset,
            "dataset_options": dataset.options,
            "in_channels": dataset.in_channels,
            "min_area": self.min_area,
            "fg_at_test": dataset.fg_at_test,
            "config": dataclasses.asdict(config),
        }

    @property
    def stop_requested(self) -> bool:
        """True once SIGINT/SIGTERM/SIGUSR2 has been caught."""
        return self.stop is not None and bool(self.stop.signum)

    def interrupted(self) -> RunInterrupted:
        """The error that ends the run after a stop request (the checkpoint is saved)."""
        progress = self.state.progress
        return RunInterrupted(
            f"stopped by {self.stop.name} at epoch {progress.epoch}, batch {progress.batch}; "
            f"checkpoint saved in {self.checkpoints}", self.stop.signum)

    def save_last(self) -> None:
        """``last.pt``: the whole :class:`TrainState` (what ``--resume`` continues from)."""
        save_atomic(self.checkpoints / LAST, {**self.payload, **self.state.state_dict()})

    def train_epoch(self) -> dict[str, float]:
        """The batches of the current epoch not run yet; returns the epoch's mean
        ``train_loss`` and the ``lr`` of its last batch. A stop request saves
        ``last.pt`` at the next batch boundary and raises :class:`RunInterrupted`."""
        state, progress = self.state, self.state.progress
        epoch = progress.epoch
        self.crops.epoch = epoch
        if progress.order is None:
            progress.order = torch.randperm(len(self.crops),
                                            generator=state.order_generator).tolist()
        size = self.batch_size
        batches = [progress.order[i * size:(i + 1) * size] for i in range(self.steps_per_epoch)]
        self.batches.epoch, self.batches.batches = epoch, batches[progress.batch:]
        state.model.train()
        batch_lr = state.lr
        for batch in self.loader:
            loss = self._step(batch)
            batch_lr = state.lr
            state.scheduler.step()
            progress.losses.append(loss)
            progress.batch += 1
            if self.stop_requested and progress.batch < self.steps_per_epoch:
                self.save_last()
                raise self.interrupted()
        return {"train_loss": float(np.mean(progress.losses)) if progress.losses
                else float("nan"), "lr": batch_lr}  # the rate of its last batch

    def _step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimiser step on one batch; returns its loss."""
        state = self.state
        state.optimizer.zero_grad(set_to_none=True)
        loss = forward_loss(self.method, state.forward, self.accel.to_device(batch), self.accel)
        if not torch.isfinite(loss):
            raise BenchbioError(
                f"the loss became {loss.item()} at epoch {state.progress.epoch}, batch "
                f"{state.progress.batch}; lower the learning rate (now {self.config.lr}) or "
                f"check the data (the checkpoint of the last complete epoch is kept in "
                f"{self.checkpoints})"
            )
        optimizer_step(loss, state.optimizer, state.scaler)
        return loss.item()

    def validate(self, samples: Sequence[Sample]) -> dict[str, float]:
        """``val_<key>`` figures of the current model on ``samples`` (the dataset's
        validation metric), and :data:`VAL_SECONDS` and :data:`VAL_CPU_SECONDS`, the run's
        wall-clock and CPU seconds so far, so that every method's validation score can be
        drawn against time."""
        preds = self._predict(samples, "val")
        val = evaluate_samples(preds, samples, self.val_metrics, self.dataset.eval_tile).mean
        return {**{f"val_{key}": float(value) for key, value in val.items()},
                VAL_SECONDS: self.state.elapsed, VAL_CPU_SECONDS: self.state.cpu_elapsed}

    def end_epoch(self, figures: dict[str, float]) -> None:
        """Keep the weights if they validate best so far, save ``last.pt``, then log the
        epoch's figures (a crash in between is repaired by the replay on resume)."""
        progress, epoch = self.state.progress, self.state.progress.epoch
        score = figures.get(f"val_{self.dataset.val_metric}")
        if score is not None and score > progress.best_val:
            progress.best_val, progress.best_epoch = score, epoch
            progress.best_file = _best_name(epoch)
            save_atomic(self.checkpoints / progress.best_file, {
                **self.payload, "model": self.state.model.state_dict(),
                "method_state": self.method.state(), "epoch": epoch,
                "val": {self.dataset.val_metric: score}})
        progress.metrics += [(key, value, epoch) for key, value in figures.items()]
        progress.next_epoch()
        self.save_last()
        for stale in self.checkpoints.glob("best-epoch*.pt"):
            if stale.name != progress.best_file:
                stale.unlink()
        for key, value in figures.items():
            self.log(key, value, epoch)

    def test(self, samples: Sequence[Sample], workdir: Path):
        """Score the best validation weights on ``samples`` (logged as ``test_<key>`` at
        the best epoch); ``workdir`` receives ``best.pt`` and ``test_overlay.png``."""
        progress = self.state.progress
        best_path = self.checkpoints / str(progress.best_file)
        shutil.copyfile(best_path, workdir / "best.pt")
        best = read_checkpoint(best_path, map_location=self.device)
        self.state.model.load_state_dict(best["model"])
        preds = self._predict(samples, "test")
        result = evaluate_samples(preds, samples, self.dataset.metrics, self.dataset.eval_tile)
        for key, value in result.mean.items():
            self.log(f"test_{key}", float(value), progress.best_epoch)
        _overview(samples, [p.labels for p in preds], workdir / "test_overlay.png")
        return result

    def _predict(self, samples: Sequence[Sample], desc: str) -> list[np.ndarray]:
        return predict_samples(self.method, self.state.model, samples, self.device,
                               fg_at_test=self.dataset.fg_at_test, min_area=self.min_area,
                               desc=desc)


def train(
    config: RunConfig, method: Method, dataset: InstanceDataset, workdir: Path,
    log_metric: LogFn | None = None, *, checkpoints: Path | None = None, resume: bool = False,
    stop: GracefulStop | None = None, samples: dict[str, list[Sample]] | None = None,
) -> RunResult:
    """Fit, train, select the best epoch on validation, score the test split.

    ``log_metric(key, value, step)`` receives every figure (replayed on resume).
    ``checkpoints`` (default ``workdir``) receives ``last.pt`` after every epoch and
    ``best-epochNNNN.pt``; ``resume`` continues from ``last.pt`` there, bit for bit on
    CPU. ``stop``, once it has caught a signal, ends the run (:class:`RunInterrupted`)
    after saving ``last.pt``. ``samples``: the train and val splits :func:`preflight`
    loaded. ``workdir`` receives ``best.pt`` and the test overlay. Without a terminal on
    stdout, one plain line per epoch reports progress (:mod:`benchbio.progress`)."""
    log = log_metric or (lambda *_: None)
    start, start_cpu = time.time(), time.process_time()
    checkpoints = Path(checkpoints or workdir)
    checkpoints.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    samples = samples or {}
    train_samples = samples.get("train") or list(dataset.split("train"))
    val_samples = samples.get("val") or list(dataset.split("val"))
    test_samples = dataset.split("test")
    saved = read_checkpoint(checkpoints / LAST) if resume and (checkpoints / LAST).is_file() \
        else None
    if saved is not None:
        method.load_state(saved["method_state"])  # the network is built from it
    else:
        method.fit(train_samples, seed=config.seed, log=log)
    steps = len(train_samples) // min(config.batch_size, len(train_samples))
    state = TrainState.create(method, dataset.in_channels, device, lr=config.lr,
                              schedule=config.lr_schedule, total_steps=config.epochs * steps,
                              seed=config.seed, started=start, started_cpu=start_cpu,
                              accel=acceleration(config))
    trainer = Trainer(config, dataset, state, train_samples, device, checkpoints, log=log,
                      stop=stop)
    if saved is not None:
        state.load_state_dict(saved)
        for key, value, step in state.progress.metrics:  # figures the crash may have lost
            log(key, value, step)
    bar = tqdm(total=config.epochs, initial=state.progress.epoch, desc="train", disable=None)
    lines = ProgressLines("epoch", config.epochs, state.progress.epoch)
    while state.progress.epoch < config.epochs:
        epoch = state.progress.epoch
        figures = trainer.train_epoch()
        if (epoch + 1) % config.val_every == 0 or epoch == config.epochs - 1:
            figures.update(trainer.validate(val_samples))
        trainer.end_epoch(figures)
        bar.update(1)
        bar.set_postfix(loss=f"{figures['train_loss']:.4f}")
        lines.step(figures=figures)
        if trainer.stop_requested and state.progress.epoch < config.epochs:
            raise trainer.interrupted()
    bar.close()
    result = trainer.test(test_samples, workdir)
    return RunResult(None, dict(result.mean), dict(result.per_image), state.progress.best_val,
                     state.progress.best_epoch, state.elapsed)


def _metric_of(key: str) -> str:
    """The metric plugin that produces result ``key`` (e.g. ``ap`` -> ``coco``)."""
    from .evaluation import metric_producing

    found = metric_producing(key)
    if found is None:
        raise BenchbioError(f"no metric plugin produces {key!r}; see `benchbio list metrics`")
    return found[0]


def _overview(samples: Sequence[Sample], preds: Sequence[np.ndarray], path: Path, n: int = 4):
    """PNG: a few test images, their predicted and their true instances."""
    from .visualize import overlay_instances, save_montage, to_rgb

    rows = []
    for s, p in list(zip(samples, preds))[:n]:
        rows.append([to_rgb(s.image), overlay_instances(s.image, p),
                     overlay_instances(s.image, s.instances)])
    if rows:
        save_montage(rows, path, titles=["image", "predicted", "ground truth"],
                     row_labels=[s.name for s in list(samples)[:n]])


# ---------------------------------------------------------------------------- run
def build(config: RunConfig) -> tuple[Method, InstanceDataset]:
    """Create the method and dataset plugins named in ``config`` (clear errors if not)."""
    method = METHODS.create(config.method, **config.method_options)
    dataset = DATASETS.create(config.dataset, data_dir=config.data_dir, **config.dataset_options)
    return method, dataset


def acceleration(config: RunConfig) -> Acceleration:
    """The device options of a run (:mod:`benchbio.acceleration`), resolved for its device."""
    return resolve_acceleration(resolve_device(config.device), config.amp, config.channels_last,
                                config.compile)


def check_options(config: RunConfig) -> None:
    """One-line errors for harness options that cannot work."""
    checks = [
        (config.epochs >= 1, "--epochs must be at least 1"),
        (config.batch_size >= 1, "--batch-size must be at least 1"),
        (config.crop_size >= 1, "--crop-size must be at least 1"),
        (config.val_every >= 1, "--val-every must be at least 1"),
        (config.workers >= 0, "--workers must be 0 or more"),
        (math.isfinite(config.lr) and config.lr > 0, "--lr must be a positive number"),
        (len(config.scale) == 2 and 0 < config.scale[0] <= config.scale[1],
         "scale must be (low, high) with 0 < low <= high"),
        (config.amp in AMP_MODES,
         f"unknown --amp {config.amp!r}; use {', '.join(AMP_MODES)}"),
        (config.channels_last in SWITCH_MODES,
         f"unknown --channels-last {config.channels_last!r}; use {', '.join(SWITCH_MODES)}"),
        (isinstance(config.compile, bool), "compile must be true or false"),
    ]
    for ok, message in checks:
        if not ok:
            raise BenchbioError(message)
    check_lr_schedule(config.lr_schedule)


def preflight(config: RunConfig, dataset: InstanceDataset) -> dict[str, list[Sample]]:
    """Check, before any training, what could fail later: the options, the device and
    every sample of every split (readable, paired, same size as its mask, finite pixels,
    the dataset's channel count). Returns the train and val splits, loaded."""
    check_options(config)
    acceleration(config)  # e.g. --amp fp16 without a GPU, before any work
    loaded: dict[str, list[Sample]] = {}
    for split in ("train", "val", "test"):
        samples = dataset.split(split)
        kept = []
        for sample in tqdm(samples, desc=f"check {split}", leave=False, disable=None):
            _check_sample(sample, split, dataset.in_channels)
            if split != "test":
                kept.append(sample)
        if split != "test":
            loaded[split] = kept
    return loaded


def _check_sample(sample: Sample, split: str, in_channels: int) -> None:
    if sample.image.shape[0] != in_channels:
        raise DataError(
            f"{split} image {sample.name} has {sample.image.shape[0]} channels but the "
            f"dataset's images have {in_channels}; convert it (all grey or all RGB)"
        )
    if not np.isfinite(sample.image).all():
        raise DataError(f"{split} image {sample.name} has NaN or infinite pixels; fix or "
                        "remove it")


def _resolved(config: RunConfig, method: Method, dataset: InstanceDataset) -> dict[str, Any]:
    """The configuration as logged: harness options and every resolved plugin option."""
    return {
        **{k: v for k, v in dataclasses.asdict(config).items()
           if k not in ("method_options", "dataset_options")},
        "method_options": method.options(),
        "dataset_options": dataset.options,
    }


#: Options that may differ when a run is resumed: where and how fast it runs, not what
#: it computes (a CPU run resumed on a GPU is no longer bit-exact, but it is the same
#: run). The experiment is the run's own whatever ``--experiment`` says.
RESUME_MAY_CHANGE = ("workers", "device", "data_dir", "experiment", "amp", "channels_last",
                     "compile")


def _check_same_config(run_id: str, saved: dict[str, Any], now: dict[str, Any]) -> None:
    from .tracking import flatten

    old, new = flatten(saved), flatten(now)
    changed = sorted(k for k in set(old) | set(new)
                     if k not in RESUME_MAY_CHANGE and old.get(k) != new.get(k))
    if changed:
        what = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in changed[:3])
        raise BenchbioError(
            f"cannot resume run {run_id} with a different configuration ({what}"
            f"{', ...' if len(changed) > 3 else ''}); resume with the same options (only "
            f"{', '.join(RESUME_MAY_CHANGE)} may change) or start a new run"
        )


def _saved_run(prior: Any) -> dict[str, Any]:
    """What a run wrote into its checkpoint folder before training (``run.json``)."""
    folder = Path(prior.data.tags[CHECKPOINT_TAG])
    try:
        return json.loads((folder / RUN_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise BenchbioError(
            f"cannot read the configuration of run {prior.info.run_id} in {folder} "
            f"({exc.strerror if isinstance(exc, OSError) else exc}); was the checkpoint "
            "folder moved or deleted? The run cannot be resumed; start a new one"
        ) from None


def resume_config(which: str, experiment: str | None = None) -> tuple[RunConfig, str]:
    """The configuration and id of the run ``which`` (a run id or ``last``) to resume."""
    from .tracking import check_tracking_store, find_run

    check_tracking_store()
    prior = find_run(which, experiment)
    saved = _saved_run(prior)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    config = RunConfig(**{k: v for k, v in saved["config"].items() if k in fields})
    config.scale = tuple(config.scale)
    return config, prior.info.run_id


def run(
    config: RunConfig, track: bool = True, tags: dict[str, str] | None = None,
    resume: str | None = None, *, checkpoint_dir: str | os.PathLike | None = None,
    on_start: Callable[[str], None] | None = None,
) -> RunResult:
    """Train and evaluate as one MLflow run (or untracked with ``track=False``).

    ``tags`` are added to the run's own (e.g. a sweep's study name and config hash).
    ``resume`` (a run id, or ``last``) continues that unfinished run from its
    checkpoint, in the same MLflow run, with the same configuration. ``checkpoint_dir``
    overrides where checkpoints go (see :mod:`benchbio.checkpoint`). ``on_start``
    receives the run id once the MLflow run exists. SIGINT, SIGTERM and SIGUSR2 save a
    checkpoint at the next batch and end the run KILLED (:class:`RunInterrupted`).
    """
    method, dataset = build(config)
    check_options(config)
    accel = acceleration(config)
    if not track:
        if resume:
            raise BenchbioError("--resume continues a tracked run; drop --no-track")
        samples = preflight(config, dataset)
        with tempfile.TemporaryDirectory(prefix="benchbio-") as tmp:
            return train(config, method, dataset, Path(tmp), samples=samples)
    import mlflow

    from .tracking import (
        check_store_writable,
        check_tracking_store,
        find_run,
        log_run_outputs,
        log_run_start,
        metric_logger,
        run_tags,
        tracked_run,
    )

    check_tracking_store()
    resolved = _resolved(config, method, dataset)
    prior = find_run(resume, config.experiment) if resume else None
    if prior is not None:
        experiment = mlflow.MlflowClient().get_experiment(prior.info.experiment_id).name
        folder: Path | None = Path(prior.data.tags[CHECKPOINT_TAG])
        saved = _saved_run(prior)
        _check_same_config(prior.info.run_id, saved["resolved"], json.loads(
            json.dumps(resolved, default=str)))
        check_writable(folder, "checkpoint folder", "fix its permissions")
    else:
        experiment = config.experiment or dataset.name
        folder = None
        root = checkpoint_dir or os.environ.get("BENCHBIO_CHECKPOINT_DIR")
        if root:
            check_writable(Path(root).expanduser(), "checkpoint folder",
                           "pass a writable --checkpoint-dir")
    check_store_writable(experiment)
    samples = preflight(config, dataset)
    accel_tags = {f"accel.{key}": value for key, value in accel.params().items()}
    tags = run_tags({"method": config.method, "dataset": config.dataset,
                     "seed": str(config.seed), "device": device_name(config.device)},
                    {**(tags or {}), **accel_tags}, prior)
    with contextlib.ExitStack() as stack:
        if folder is not None:  # refuse a run that is alive elsewhere before touching it
            stack.enter_context(run_lock(folder, prior.info.run_id))
        stop = stack.enter_context(GracefulStop())
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="benchbio-")))
        try:
            with tracked_run(experiment, f"{config.method}-{config.dataset}-s{config.seed}",
                             tags, run_id=prior.info.run_id if prior else None) as active:
                run_id = active.info.run_id
                if folder is None:
                    folder = checkpoint_folder(run_id, active.info.artifact_uri, checkpoint_dir)
                    check_writable(folder, "checkpoint folder",
                                   "pass a writable --checkpoint-dir")
                    stack.enter_context(run_lock(folder, run_id))
                    write_json_atomic(folder / RUN_CONFIG, {
                        "run_id": run_id, "config": dataclasses.asdict(config),
                        "resolved": json.loads(json.dumps(resolved, default=str))})
                    log_run_start(folder, resolved, workdir)
                if on_start is not None:
                    on_start(run_id)
                log_metric = metric_logger(run_id, resumed=prior is not None)
                result = train(config, method, dataset, workdir, log_metric, checkpoints=folder,
                               resume=prior is not None, stop=stop, samples=samples)
                log_run_outputs(workdir, log_metric, best_epoch=result.best_epoch,
                                seconds=result.seconds, per_image=result.per_image,
                                method_files=method.write_artifacts(workdir / "method"))
                result.run_id = run_id
                result.checkpoint = f"runs:/{run_id}/checkpoint/best.pt"
        except RunInterrupted as exc:
            stop.chain()  # e.g. submitit's handler: requeue the pre-empted SLURM job
            raise RunInterrupted(f"{exc}; continue with `benchbio run --resume {run_id}`",
                                 exc.signum) from None
    _release_checkpoints(folder)
    return result


def _release_checkpoints(folder: Path) -> None:
    """After a FINISHED run: its best weights are the artifact ``checkpoint/best.pt`` and
    a finished run is never resumed, so only ``run.json`` stays in its folder."""
    for path in [folder / LAST, *folder.glob("best-epoch*.pt")]:
        with contextlib.suppress(OSError):
            path.unlink()
