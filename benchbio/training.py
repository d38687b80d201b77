"""The one training loop and the one evaluation path that serve every method.

:func:`run` is what ``benchbio run`` does: check everything that can be checked, fit the
method's prior (e.g. guide search), train on random augmented crops of the train split,
keep the checkpoint that scores best on the validation split, score the test split with
the dataset's metrics, and log all of it to one MLflow run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import InstanceDataset, Sample
from .errors import BenchbioError
from .instances import crop_instances, is_stack, relabel
from .method import Method
from .registry import DATASETS, METHODS

__all__ = [
    "RunConfig",
    "RunResult",
    "CropDataset",
    "resolve_device",
    "predict",
    "predict_samples",
    "evaluate_samples",
    "train",
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
    crop_size: int = 448
    scale: tuple[float, float] = (0.8, 1.25)
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    experiment: str | None = None
    val_every: int = 1
    workers: int = 0
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


# ---------------------------------------------------------------------------- device
def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchbioError(
            f"--device {device} asked for, but no CUDA device is available on this machine; "
            "use --device cpu or --device auto"
        )
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise BenchbioError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; deterministic kernels on CPU."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- data
def _resize(arr: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(arr)).float()[None]
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest-exact")[0].numpy()
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].numpy()


def augment(
    sample: Sample, crop: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Random rescale, random ``crop x crop`` window (zero padding if smaller), random
    left-right flip: the paper's augmentation. Returns (image, instances, fg)."""
    image, instances, fg = sample.image, np.asarray(sample.instances), sample.fg
    if not is_stack(instances):
        instances = relabel(instances)
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    h, w = image.shape[1:]
    if abs(s - 1) > 1e-3:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        image = _resize(image, size, "bilinear").astype(np.float32)
        lab = instances if is_stack(instances) else instances[None]
        lab = _resize(lab.astype(np.float32), size, "nearest").astype(lab.dtype)
        instances = lab if is_stack(instances) else lab[0]
        if fg is not None:
            fg = _resize(fg[None].astype(np.float32), size, "nearest")[0] > 0.5
        h, w = size
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)))
        pad = ((0, 0), (0, ph), (0, pw)) if is_stack(instances) else ((0, ph), (0, pw))
        instances = np.pad(instances, pad)
        fg = np.pad(fg, ((0, ph), (0, pw))) if fg is not None else None
        h, w = h + ph, w + pw
    y0, x0 = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    sl = (slice(y0, y0 + crop), slice(x0, x0 + crop))
    image = image[(slice(None), *sl)]
    instances = crop_instances(instances, sl)
    fg = fg[sl] if fg is not None else None
    if rng.random() < 0.5:
        image, instances = image[..., ::-1], instances[..., ::-1]
        fg = fg[..., ::-1] if fg is not None else None
    return np.ascontiguousarray(image), np.ascontiguousarray(instances), (
        np.ascontiguousarray(fg) if fg is not None else None
    )


class CropDataset(Dataset):
    """One random augmented crop of each training image per epoch, with the method's
    targets. Randomness comes from (seed, epoch, index), so runs are reproducible
    whatever the number of loader workers."""

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

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        sample = self.samples[index]
        if sample.crowd is not None and is_stack(sample.instances):
            sample = dataclasses.replace(
                sample, instances=sample.instances[~np.asarray(sample.crowd, bool)], crowd=None
            )
        image, instances, fg = augment(sample, self.crop, self.scale, rng)
        targets = self.method.targets(instances, fg if self.use_fg else None)
        return {"image": torch.from_numpy(image), **{k: torch.from_numpy(np.asarray(v))
                                                      for k, v in targets.items()}}


# ---------------------------------------------------------------------------- inference
def _divisor(model: torch.nn.Module) -> int:
    return int(getattr(model, "divisor", 32))


@torch.no_grad()
def predict(
    method: Method, model: torch.nn.Module, image: np.ndarray, device: torch.device,
    fg: np.ndarray | None = None, min_area: int = 0,
) -> np.ndarray:
    """Label image for one ``(C, H, W)`` image: pad to the network's divisor, forward,
    crop back, post-process with the method (and the protocol's fg mask, if given)."""
    model.eval()
    c, h, w = image.shape
    d = _divisor(model)
    ph, pw = (-h) % d, (-w) % d
    x = torch.from_numpy(np.ascontiguousarray(image)).float()[None].to(device)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        out = model(x)[0, :, :h, :w].float()
    return method.postprocess(out, fg, min_area)


def predict_samples(
    method: Method, model: torch.nn.Module, samples: Sequence[Sample], device: torch.device,
    *, fg_at_test: bool, min_area: int, desc: str = "predict",
) -> list[np.ndarray]:
    """Predictions for every sample of a split, with a progress bar."""
    return [
        predict(method, model, s.image, device, s.fg if fg_at_test else None, min_area)
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
    preds: Sequence[np.ndarray], samples: Sequence[Sample], metrics: Sequence[str],
    eval_tile: int | None = None,
):
    """Score predictions against the samples' instances with metric plugins.

    With ``eval_tile`` each image is cut into non-overlapping tiles that are scored as
    separate images (the E. coli protocol).
    """
    from .evaluation import evaluate

    names, p_list, g_list, crowds = [], [], [], []
    for pred, s in zip(preds, samples):
        if eval_tile:
            for (key, p), (_, g) in zip(_tiles(pred, eval_tile), _tiles(s.instances, eval_tile)):
                names.append(f"{s.name}@{key}")
                p_list.append(p)
                g_list.append(g)
                crowds.append(None)
        else:
            names.append(s.name)
            p_list.append(pred)
            g_list.append(s.instances)
            crowds.append(s.crowd)
    return evaluate(p_list, g_list, metrics=list(metrics), names=names, gt_crowd=crowds)


# ---------------------------------------------------------------------------- training
def _checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def train(
    config: RunConfig, method: Method, dataset: InstanceDataset, workdir: Path,
    log_metric=None,
) -> RunResult:
    """Fit, train, select the best epoch on validation, score the test split.

    ``log_metric(key, value, step)`` receives every figure (MLflow during a run).
    Writes ``best.pt`` into ``workdir``.
    """
    log = log_metric or (lambda *_: None)
    start = time.time()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    train_samples = list(dataset.split("train"))
    val_samples = list(dataset.split("val"))
    test_samples = dataset.split("test")
    min_area = method.opts.min_area if method.opts.min_area is not None else dataset.min_area
    method.fit(train_samples, seed=config.seed, log=log)
    model = method.build_model(dataset.in_channels).to(device)
    d = _divisor(model)
    crop = int(math.ceil(config.crop_size / d) * d)
    loader_gen = torch.Generator().manual_seed(config.seed)
    crops = CropDataset(train_samples, method, crop, config.scale, config.seed, dataset.fg_at_test)
    loader = DataLoader(
        crops, batch_size=min(config.batch_size, len(crops)), shuffle=True, drop_last=True,
        num_workers=config.workers, generator=loader_gen,
        persistent_workers=False,
    )
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda")
    best_val, best_epoch = -math.inf, -1
    best_path = workdir / "best.pt"
    payload_base = {
        "method": config.method,
        "method_options": method.options(),
        "dataset": config.dataset,
        "dataset_options": dataset.options,
        "in_channels": dataset.in_channels,
        "min_area": min_area,
        "fg_at_test": dataset.fg_at_test,
        "config": dataclasses.asdict(config),
    }
    epochs = tqdm(range(config.epochs), desc="train", disable=None)
    for epoch in epochs:
        crops.epoch = epoch
        model.train()
        losses = []
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            image = batch.pop("image")
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                output = model(image)
            loss = method.loss(output.float(), batch)
            if not torch.isfinite(loss):
                raise BenchbioError(
                    f"the loss became {loss.item()} at epoch {epoch}; lower the learning rate "
                    f"(now {config.lr}) or check the data"
                )
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
        train_loss = float(np.mean(losses)) if losses else float("nan")
        log("train_loss", train_loss, epoch)
        last = epoch == config.epochs - 1
        if (epoch + 1) % config.val_every == 0 or last:
            preds = predict_samples(method, model, val_samples, device,
                                    fg_at_test=dataset.fg_at_test, min_area=min_area, desc="val")
            val = evaluate_samples(preds, val_samples, [_metric_of(dataset.val_metric)],
                                   dataset.eval_tile).mean
            score = float(val[dataset.val_metric])
            for key, value in val.items():
                log(f"val_{key}", float(value), epoch)
            if score > best_val:
                best_val, best_epoch = score, epoch
                _checkpoint(best_path, {**payload_base, "model": model.state_dict(),
                                        "method_state": method.state(), "epoch": epoch,
                                        "val": {dataset.val_metric: score}})
            epochs.set_postfix(loss=f"{train_loss:.4f}", val=f"{score:.3f}")
    state = torch.load(best_path, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    preds = predict_samples(method, model, test_samples, device, fg_at_test=dataset.fg_at_test,
                            min_area=min_area, desc="test")
    result = evaluate_samples(preds, test_samples, dataset.metrics, dataset.eval_tile)
    for key, value in result.mean.items():
        log(f"test_{key}", float(value), best_epoch)
    _overview(test_samples, preds, workdir / "test_overlay.png")
    return RunResult(None, dict(result.mean), dict(result.per_image), best_val, best_epoch,
                     time.time() - start)


def _metric_of(key: str) -> str:
    """The metric plugin that produces result ``key`` (e.g. ``ap`` -> ``coco``)."""
    from .registry import METRICS

    for name in METRICS.names():
        metric = METRICS.create(name)
        if key in getattr(metric, "keys", ()):
            return name
    raise BenchbioError(f"no metric plugin produces {key!r}; see `benchbio list metrics`")


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


def preflight(config: RunConfig, dataset: InstanceDataset) -> None:
    """Check, before any training, what can fail later: device, splits, one sample each."""
    resolve_device(config.device)
    for split in ("train", "val", "test"):
        samples = dataset.split(split)
        samples[0]
    if config.epochs < 1:
        raise BenchbioError("--epochs must be at least 1")
    if config.batch_size < 1:
        raise BenchbioError("--batch-size must be at least 1")


def run(
    config: RunConfig, track: bool = True, tags: dict[str, str] | None = None
) -> RunResult:
    """Train and evaluate as one MLflow run (or untracked with ``track=False``).

    ``tags`` are added to the run's own (e.g. a sweep's study name and config hash).
    """
    method, dataset = build(config)
    preflight(config, dataset)
    with tempfile.TemporaryDirectory(prefix="benchbio-") as tmp:
        workdir = Path(tmp)
        if not track:
            return train(config, method, dataset, workdir)
        import mlflow

        from .tracking import check_tracking_store, flatten, git_commit, tracked_run

        check_tracking_store()
        device = resolve_device(config.device)
        tags = {
            "method": config.method,
            "dataset": config.dataset,
            "seed": str(config.seed),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "git_commit": git_commit(),
            **(tags or {}),
        }
        experiment = config.experiment or dataset.name
        resolved = {
            **{k: v for k, v in dataclasses.asdict(config).items()
               if k not in ("method_options", "dataset_options")},
            "method_options": method.options(),
            "dataset_options": dataset.options,
        }
        with tracked_run(experiment, f"{config.method}-{config.dataset}-s{config.seed}",
                         tags) as active:
            mlflow.log_params(flatten(resolved))
            (workdir / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
            mlflow.log_artifact(str(workdir / "config.json"))

            def log_metric(key: str, value: float, step: int) -> None:
                mlflow.log_metric(key, value, step=step)

            result = train(config, method, dataset, workdir, log_metric)
            mlflow.log_metric("best_epoch", result.best_epoch)
            mlflow.log_metric("run_seconds", result.seconds)
            mlflow.log_artifact(str(workdir / "best.pt"), "checkpoint")
            for path in method.write_artifacts(workdir / "method"):
                mlflow.log_artifact(str(path), "method")
            if (workdir / "test_overlay.png").exists():
                mlflow.log_artifact(str(workdir / "test_overlay.png"))
            (workdir / "test_per_image.json").write_text(json.dumps(result.per_image, indent=2))
            mlflow.log_artifact(str(workdir / "test_per_image.json"))
            result.run_id = active.info.run_id
        return result
