"""One prepared check of the GPU path: validate it and measure it, in at most 8 minutes.

On a GPU machine (see README.md, "Performance", for carrying the wheels and the data)::

    python benchmarks/gpu_check.py --data-dir .gpudata

and on any CPU, in under two minutes (the test suite runs this, so the script cannot rot
while no GPU is at hand)::

    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu-tiny.md

What it does, in this order, writing the report after every section (so a run cut short
still leaves what it measured):

(a) the CUDA tests (``pytest -m cuda tests/test_cuda.py``: a training step under AMP,
    tiled inference, mean-shift on the GPU equal to the CPU's); they skip without CUDA;
(b) training steps per second and peak GPU memory of every registered method at paper
    scale (448 x 448 crops, width 64, 7 x 7 kernels, batch 4 and 16) in float32, with
    AMP, with AMP and channels-last, and (harmonic) compiled; each timed step is the
    training loop's (``forward_loss``), so it includes what a method builds from the batch
    on the device (``Method.device_targets``: PatchPerPix's patches); plus what the loader
    feeds with pinned memory and persistent workers, to show whether it keeps up;
(d) a short paper-scale harmonic training on CVPPP for ``--train-minutes`` through the
    harness's own loop, with its validation SBD;
(c) inference per megapixel with that model: network, post-processing (mean-shift on
    the GPU and on the CPU), metrics, and tiled inference of a large image;
(e) the projected wall-clock time of every study spec under ``results/`` on this device,
    from measured step times x the spec's epochs x steps per epoch (+ validation);
(f) all of it as Markdown in ``results/bench/gpu.md`` (``--out``).

Needs only what the GPU image has plus two small wheels (platformdirs, pycocotools);
mlflow is not used. ``--pack-cvppp SRC DEST`` writes the compact copy of CVPPP A1 that
travels to the GPU machine (RGB PNGs without the unused alpha channel; the loaded samples
are checked to be identical to the original's).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

#: Training images per split where the data is not at hand (counted with the real data;
#: tests/test_gpu_check.py checks them against it where it is present).
KNOWN_SPLITS = {
    "cvppp": {"train": 80, "val": 16, "megapixels": 0.265},
    "celegans": {"train": 40, "val": 10, "megapixels": 0.362},
}

PAPER = {"crop": 448, "width": 64, "kernel_size": 7, "batches": (4, 16)}
TINY = {"crop": 48, "width": 8, "kernel_size": 3, "batches": (2,)}


# ---------------------------------------------------------------------------- report
@dataclass
class Report:
    """Sections of Markdown, written to ``path`` after each one."""

    path: Path
    header: list[str]
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, title: str, lines: list[str]) -> None:
        self.sections.append((title, lines))
        self.write()

    def write(self) -> None:
        text = list(self.header)
        for title, lines in self.sections:
            text += ["", f"## {title}", "", *lines]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(text) + "\n")


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout
        return (out or "unknown") + (" (+ uncommitted changes)" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def environment(device: torch.device) -> list[str]:
    lines = [f"- torch {torch.__version__}, Python {platform.python_version()}, "
             f"{os.cpu_count()} CPUs"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(f"- device: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute "
                     f"capability {p.major}.{p.minor}, {p.multi_processor_count} SMs; CUDA "
                     f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; bf16 "
                     f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}; TF32 matmul "
                     f"{torch.backends.cuda.matmul.allow_tf32}, TF32 conv "
                     f"{torch.backends.cudnn.allow_tf32}")
    else:
        lines.append(f"- device: CPU ({platform.processor() or platform.machine()}), "
                     f"{torch.get_num_threads()} torch threads")
    missing = []
    for module in ("mlflow", "pycocotools", "segmentation_models_pytorch", "platformdirs"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    lines.append(f"- not installed: {', '.join(missing) or 'nothing checked is missing'}")
    return lines


# ---------------------------------------------------------------------------- (a)
def cuda_tests(timeout: float) -> list[str]:
    """Run the tests marked ``cuda``; their summary line."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
           "tests/test_cuda.py"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    tail = [line for line in proc.stdout.strip().splitlines() if line.strip()][-12:]
    summary = tail[-1] if tail else "(no output)"
    lines = [f"`{shlex.join(cmd[1:])}` (exit {proc.returncode}, "
             f"{time.perf_counter() - start:.0f} s): **{summary.strip('= ')}**"]
    if proc.returncode not in (0, 5):  # 5: nothing collected
        lines += ["", "```", *tail, *proc.stderr.strip().splitlines()[-10:], "```"]
        raise CheckFailed("the CUDA tests failed", lines)
    return lines


class CheckFailed(Exception):
    """A section found a fault; ``lines`` still go into the report."""

    def __init__(self, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.lines = lines


# ---------------------------------------------------------------------------- data
def training_samples(data_dir: str | None, tiny: bool, images: int):
    """(dataset name, dataset, train samples): CVPPP when present, else synthetic-cells."""
    from benchbio.errors import BenchbioError
    from benchbio.registry import DATASETS

    if not tiny and data_dir:
        try:
            ds = DATASETS.create("cvppp", data_dir=data_dir)
            split = ds.split("train")
            return "cvppp", ds, [split[i] for i in range(min(images, len(split)))]
        except BenchbioError as exc:
            log(f"CVPPP not usable ({exc}); using synthetic-cells")
    size = 64 if tiny else 512
    ds = DATASETS.create("synthetic-cells", size=size, n_train=images, n_val=2, n_test=2)
    return "synthetic-cells", ds, list(ds.split("train"))


def method_options(name: str, scale: dict, fit_steps: int | None) -> dict:
    """Paper-scale network options that the method has; a short guide search."""
    from benchbio.registry import METHODS

    known = METHODS.create(name).options()
    options = {k: scale[k] for k in ("width", "kernel_size") if k in known}
    if fit_steps is not None and "search_steps" in known:
        options["search_steps"] = fit_steps
    return options


# ---------------------------------------------------------------------------- (b)
VARIANTS = {  # name -> (amp, channels_last, compile)
    "fp32": ("off", "off", False),
    "amp": ("auto", "off", False),
    "amp + channels-last": ("auto", "on", False),
    "amp + channels-last + compile": ("auto", "on", True),
}


@dataclass
class StepTiming:
    seconds: float  # per step
    peak_mib: float | None
    first_s: float  # the first step (compilation, cuDNN autotuning)


def time_steps(method, in_channels: int, batch: dict, device: torch.device, variant: str,
               steps: int, warmup: int, compile_backend: str | None = None) -> StepTiming:
    """Seconds per training step on a fixed device batch (no loader), and peak memory."""
    from benchbio.acceleration import forward_loss, optimizer_step, resolve_acceleration

    amp, channels_last, compile_ = VARIANTS[variant]
    if device.type == "cpu" and amp == "auto":
        amp = "bf16"  # the CPU's autocast, so the variant is exercised
    accel = resolve_acceleration(device, amp, channels_last, compile_)
    if compile_backend and compile_:
        accel = dataclasses.replace(accel, compile_backend=compile_backend)
    torch.manual_seed(0)
    model, forward = accel.prepare_model(method.build_model(in_channels))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    scaler = accel.grad_scaler()
    data = accel.to_device(batch)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = forward_loss(method, forward, data, accel)
        optimizer_step(loss, opt, scaler)
        sync(device)
        times.append(time.perf_counter() - start)
    if not math.isfinite(loss.item()):
        raise CheckFailed(f"{method.name} {variant}: loss {loss.item()}", [])
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del model, forward, opt, data
    return StepTiming(float(np.median(times[warmup:])), peak, times[0])


def make_batch(method, samples, crop: int, size: int, fg: bool) -> dict:
    from benchbio.training import CropDataset, collate_crops

    crops = CropDataset(samples, method, crop, (0.8, 1.25), 0, fg)
    return collate_crops([crops[i % len(crops)] for i in range(size)])


def training_throughput(ctx) -> list[str]:
    from benchbio.registry import METHODS

    scale, device = ctx.scale, ctx.device
    lines = [f"Fixed batches already on the device (the loader is measured below); "
             f"{scale['crop']} x {scale['crop']} crops of `{ctx.dataset_name}`, width "
             f"{scale['width']}, {scale['kernel_size']} x {scale['kernel_size']} kernels, "
             f"Adam; median of {ctx.steps} steps after {ctx.warmup} warm-up steps; a step "
             "includes the targets a method builds on the device (`Method.device_targets`). "
             "Peak: `torch.cuda.max_memory_allocated` of the step.", "",
             "| method | batch | variant | step (ms) | samples/s | peak GPU memory (MiB) "
             "| first step (s) |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for name in METHODS.names():
        # every variant for harmonic; with --tiny only the GPU default for the others
        variants = [v for v in VARIANTS if "compile" not in v]
        if ctx.tiny and name != "harmonic":
            variants = ["amp + channels-last"]
        if ctx.out_of_time(reserve=ctx.reserve_after_b):
            lines.append(f"| {name} | - | not measured: time budget spent | | | | |")
            continue
        method = METHODS.create(name, **method_options(name, scale, ctx.fit_steps))
        method.fit(ctx.samples, seed=0)
        for size in scale["batches"]:
            batch = make_batch(method, ctx.samples, scale["crop"], size, ctx.dataset.fg_at_test)
            chosen = variants + (["amp + channels-last + compile"]
                                 if name == "harmonic" and size == scale["batches"][0] else [])
            for variant in chosen:
                if ctx.out_of_time(reserve=ctx.reserve_after_b):
                    lines.append(f"| {name} | {size} | {variant} | not measured: time budget "
                                 "spent | | | |")
                    continue
                try:
                    t = time_steps(method, ctx.dataset.in_channels, batch, device, variant,
                                   ctx.steps, ctx.warmup, ctx.compile_backend)
                except torch.cuda.OutOfMemoryError:
                    lines.append(f"| {name} | {size} | {variant} | out of memory | | | |")
                    torch.cuda.empty_cache()
                    continue
                ctx.step_times[(name, scale["crop"], size, scale["width"],
                                scale["kernel_size"], variant)] = t.seconds
                peak = f"{t.peak_mib:,.0f}" if t.peak_mib is not None else "-"
                lines.append(f"| {name} | {size} | {variant} | {1000 * t.seconds:.1f} | "
                             f"{size / t.seconds:.1f} | {peak} | {t.first_s:.2f} |")
            log(f"(b) {name} done")
    lines += ["", *loader_feed(ctx)]
    return lines


def loader_feed(ctx) -> list[str]:
    """Samples/s the harness's DataLoader delivers to the device for harmonic."""
    from torch.utils.data import DataLoader

    from benchbio.acceleration import resolve_acceleration
    from benchbio.registry import METHODS
    from benchbio.training import CropDataset, collate_crops

    scale = ctx.scale
    method = METHODS.create("harmonic", **method_options("harmonic", scale, ctx.fit_steps))
    method.fit(ctx.samples, seed=0)
    accel = resolve_acceleration(ctx.device)
    batch = scale["batches"][-1]
    repeat = max(1, 2 * batch * max(ctx.workers, 1) // len(ctx.samples))  # 2 batches a worker
    crops = CropDataset(ctx.samples * repeat, method, scale["crop"], (0.8, 1.25), 0,
                        ctx.dataset.fg_at_test)
    loader = DataLoader(crops, batch_size=batch, shuffle=True, drop_last=True,
                        collate_fn=collate_crops,
                        **accel.loader_options(ctx.workers))
    seen, start = 0, None
    for epoch in range(2):  # the second epoch shows the persistent workers
        for i, b in enumerate(loader):
            accel.to_device(b)
            if epoch == 0 and i == 0:
                sync(ctx.device)
                start = time.perf_counter()  # the first batch includes worker start-up
                continue
            seen += len(b["image"])
    sync(ctx.device)
    rate = seen / (time.perf_counter() - start)
    return [f"Loader: harmonic crops delivered to the device by `DataLoader` with "
            f"{ctx.workers} workers, batch {batch}, pinned memory {accel.pin_memory}, "
            f"persistent workers {ctx.workers > 0}: **{rate:.0f} samples/s** (two epochs of "
            f"{len(crops)} crops, the first batch excluded)."]


# ---------------------------------------------------------------------------- (d)
def short_training(ctx) -> list[str]:
    """Harmonic on CVPPP (else synthetic-cells) through ``training.train`` for a fixed time."""
    from benchbio.registry import DATASETS, METHODS
    from benchbio.training import RunConfig, train

    scale = ctx.scale
    if ctx.tiny:
        name, ds = "synthetic-cells", DATASETS.create("synthetic-cells", size=64, n_train=4,
                                                      n_val=2, n_test=2)
    else:
        name, ds = ctx.dataset_name, ctx.dataset
    batch = scale["batches"][0]
    options = method_options("harmonic", scale, ctx.fit_steps if ctx.tiny else None)
    config = RunConfig(method="harmonic", dataset=name, epochs=1, batch_size=batch,
                       crop_size=scale["crop"], lr=1e-4, device=str(ctx.device),
                       workers=ctx.workers, val_every=1, method_options=options,
                       data_dir=ctx.data_dir if name == "cvppp" else None)
    train_images = len(ds.split("train"))
    steps = max(1, train_images // batch)
    key = ("harmonic", scale["crop"], batch, scale["width"], scale["kernel_size"],
           "amp + channels-last")
    step_s = ctx.step_times.get(key, 0.5 if not ctx.tiny else 0.2)
    val_s = 1.0 + len(ds.split("val")) * 0.5  # validation and its mean-shift, roughly
    # the asked minutes, or what the budget leaves after (c) and (e) (about a minute)
    seconds = min(ctx.train_minutes * 60, ctx.deadline - time.monotonic() - 90)
    if seconds < 20 and not ctx.tiny:
        raise CheckFailed("no time left for the short training", ["Not run: the time "
                          "budget was spent by (a) and (b); rerun with --skip a,b."])
    epochs = max(1, int(seconds / (steps * step_s * 1.2 + val_s)))
    config.epochs = epochs
    config.val_every = max(1, epochs // 5)
    figures: list[tuple[str, float, int]] = []
    method = METHODS.create("harmonic", **options)
    planned, start = seconds, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        result = train(config, method, ds, Path(tmp), lambda k, v, s: figures.append((k, v, s)))
        best = torch.load(Path(tmp) / "best.pt", map_location="cpu", weights_only=False)
    seconds = time.perf_counter() - start
    ctx.model_for_inference, ctx.trained_state = (method,), best["model"]
    vals = [(s, v) for k, v, s in figures if k == "val_sbd"]
    losses = [(s, v) for k, v, s in figures if k == "train_loss"]
    lines = [f"`harmonic` on `{name}` ({train_images} training images, {steps} steps of batch "
             f"{batch} per epoch, {scale['crop']} x {scale['crop']} crops, width "
             f"{scale['width']}, {scale['kernel_size']} x {scale['kernel_size']} SinConv, lr "
             f"1e-4, device defaults, {ctx.workers} loader workers) for {epochs} epochs, "
             f"sized to {planned / 60:.1f} minutes from step times of (b): "
             f"**{seconds:.0f} s** in all (guide search included), best validation SBD "
             f"**{result.best_val:.3f}** at epoch {result.best_epoch}.", "",
             "| epoch | train loss | validation SBD |", "| ---: | ---: | ---: |"]
    by_epoch = dict(vals)
    for epoch, loss in losses:
        sbd = f"{by_epoch[epoch]:.3f}" if epoch in by_epoch else ""
        lines.append(f"| {epoch} | {loss:.4f} | {sbd} |")
    ctx.epoch_seconds[(name, "harmonic")] = seconds / epochs
    return lines


# ---------------------------------------------------------------------------- (c)
def inference(ctx) -> list[str]:
    from benchbio.cluster import embeddings_to_labels
    from benchbio.evaluation import evaluate
    from benchbio.inference import forward_tiled
    from benchbio.registry import METHODS

    scale, device = ctx.scale, ctx.device
    if ctx.model_for_inference is not None:
        method = ctx.model_for_inference[0]
        trained = "the model of (d)"
    else:
        method = METHODS.create("harmonic", **method_options("harmonic", scale, ctx.fit_steps))
        method.fit(ctx.samples, seed=0)
        trained = "an untrained model (d) did not run"
    torch.manual_seed(0)
    model = method.build_model(ctx.dataset.in_channels).to(device).eval()
    if ctx.trained_state is not None:
        model.load_state_dict(ctx.trained_state)
    samples = list(ctx.dataset.split("val"))[: ctx.inference_images]
    net = post_dev = post_cpu = metrics_s = 0.0
    pixels = 0
    sbds = []
    for s in samples:
        sync(device)
        t0 = time.perf_counter()
        out = forward_tiled(model, s.image, device, tile=1024, overlap=0)
        out_dev = out.to(device)
        sync(device)
        t1 = time.perf_counter()
        labels = embeddings_to_labels(out_dev, method.opts.eps)
        sync(device)
        t2 = time.perf_counter()
        embeddings_to_labels(out, method.opts.eps)
        t3 = time.perf_counter()
        sbds.append(float(evaluate([labels], [s.instances], metrics=["sbd"]).mean["sbd"]))
        t4 = time.perf_counter()
        net, post_dev, post_cpu = net + t1 - t0, post_dev + t2 - t1, post_cpu + t3 - t2
        metrics_s += t4 - t3
        pixels += s.image.shape[1] * s.image.shape[2]
    mp = pixels / 1e6
    ctx.inference_s_per_mp = (net + post_dev) / mp
    side = 256 if ctx.tiny else 2048
    big = np.random.default_rng(0).random((ctx.dataset.in_channels, side, side),
                                          dtype=np.float32)
    tile = 128 if ctx.tiny else 512
    forward_tiled(model, big[:, :tile, :tile], device, tile=tile, overlap=tile // 4)
    sync(device)
    t0 = time.perf_counter()
    forward_tiled(model, big, device, tile=tile, overlap=tile // 4, batch_size=4)
    sync(device)
    tiled = (time.perf_counter() - t0) / (side * side / 1e6)
    where = "GPU" if device.type == "cuda" else "device"
    return [f"{len(samples)} validation images of `{ctx.dataset_name}` ({mp:.2f} megapixels), "
            f"{trained}; whole-image forward pass under autocast; harmonic's mean-shift "
            f"(torch, bandwidth {method.opts.eps}) on the {where} and on the CPU; SBD on the "
            "CPU.", "",
            "| stage | seconds per megapixel |", "| --- | ---: |",
            f"| network | {net / mp:.4f} |",
            f"| post-processing, mean-shift on the {where} | {post_dev / mp:.4f} |",
            f"| post-processing, mean-shift on the CPU | {post_cpu / mp:.4f} |",
            f"| metrics (SBD, CPU) | {metrics_s / mp:.4f} |",
            f"| tiled network, {side} x {side} image in {tile}-pixel tiles (overlap "
            f"{tile // 4}), batch 4 | {tiled:.4f} |", "",
            f"Mean validation SBD of these predictions: {np.mean(sbds):.3f}. The metrics stay "
            "on the CPU: they take milliseconds per image (results/bench/metrics.md)."]


# ---------------------------------------------------------------------------- (e)
def load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(path.read_text())


def split_sizes(ctx, dataset: str, options: dict) -> dict:
    """Training and validation image counts, megapixels per validation image."""
    from benchbio.registry import DATASETS

    key = (dataset, tuple(sorted(options.items())))
    if key in ctx.split_cache:
        return ctx.split_cache[key]
    try:
        data_dir = ctx.data_dir if dataset not in ("synthetic-cells", "synthetic-worms") else None
        ds = DATASETS.create(dataset, data_dir=data_dir, **options)
        val = ds.split("val")
        first = val[0]
        sizes = {"train": len(ds.split("train")), "val": len(val),
                 "megapixels": first.image.shape[1] * first.image.shape[2] / 1e6}
    except Exception:  # data not here: the counts taken with it
        sizes = KNOWN_SPLITS.get(dataset)
    ctx.split_cache[key] = sizes
    return sizes


def projections(ctx) -> list[str]:
    from benchbio.registry import METHODS
    from benchbio.training import RunConfig

    defaults = RunConfig(method="", dataset="")
    lines = ["Per cell: epochs x (training images // batch) x the measured step time (AMP + "
             "channels-last, the GPU default; a configuration (b) did not cover is measured "
             f"here, {ctx.steps} steps) + (epochs / val_every) x validation images x "
             "megapixels x the inference time per megapixel of (c) (network + mean-shift). "
             "Loader stalls, checkpoint saving and the guide search (once per dataset, "
             "cached) are not included.", "",
             "| study | cells | configurations | per cell (h) | study on one GPU (h) |",
             "| --- | ---: | --- | ---: | ---: |"]
    for spec_path in sorted(REPO.glob("results/*/spec.toml")):
        if ctx.out_of_time(reserve=10):
            lines.append(f"| {spec_path.parent.name} | not projected: time budget spent | | | |")
            continue
        spec = load_toml(spec_path)
        study, run = spec.get("study", {}), spec.get("run", {})
        total, per_cell, configs, missing = 0.0, [], set(), []
        for dataset in study.get("datasets", []):
            for name in study.get("methods", []):
                r = {"epochs": defaults.epochs, "batch_size": defaults.batch_size,
                     "crop_size": defaults.crop_size, "val_every": defaults.val_every,
                     **run, **spec.get("methods", {}).get(name, {}).get("run", {}),
                     **spec.get("datasets", {}).get(dataset, {}).get("run", {})}
                opts = {**spec.get("method_options", {}),
                        **spec.get("methods", {}).get(name, {}).get("options", {})}
                dopts = {**spec.get("dataset_options", {}),
                         **spec.get("datasets", {}).get(dataset, {}).get("options", {})}
                sizes = split_sizes(ctx, dataset, dopts)
                if sizes is None or name not in METHODS:
                    missing.append(f"{name}/{dataset}")
                    continue
                known = METHODS.create(name).options()
                width = opts.get("width", known.get("width"))
                kernel = opts.get("kernel_size", known.get("kernel_size"))
                step = ctx.step_time(name, r["crop_size"], min(r["batch_size"], sizes["train"]),
                                     width, kernel, opts)
                steps = sizes["train"] // min(r["batch_size"], sizes["train"])
                train_s = r["epochs"] * steps * step
                val_s = (r["epochs"] / r["val_every"]) * sizes["val"] * sizes["megapixels"] * (
                    ctx.inference_s_per_mp or 0.0)
                seeds = len(study.get("seeds", [0]))
                per_cell.append((train_s + val_s) / 3600)
                total += seeds * (train_s + val_s)
                configs.add(f"{r['crop_size']}px b{r['batch_size']} w{width} k{kernel} "
                            f"{r['epochs']} ep")
        cells = len(per_cell) * len(study.get("seeds", [0]))
        span = (f"{min(per_cell):.2f}-{max(per_cell):.2f}" if per_cell else "-")
        note = f" (no data for {', '.join(missing)})" if missing else ""
        lines.append(f"| {study.get('name', spec_path.parent.name)} | {cells} | "
                     f"{'; '.join(sorted(configs))}{note} | {span} | {total / 3600:.2f} |")
    return lines


# ---------------------------------------------------------------------------- context
@dataclass
class Context:
    device: torch.device
    tiny: bool
    scale: dict
    deadline: float
    data_dir: str | None
    workers: int
    train_minutes: float
    steps: int
    warmup: int
    fit_steps: int | None
    compile_backend: str | None
    inference_images: int
    reserve_after_b: float
    dataset_name: str = ""
    dataset: object = None
    samples: list = field(default_factory=list)
    step_times: dict = field(default_factory=dict)
    epoch_seconds: dict = field(default_factory=dict)
    split_cache: dict = field(default_factory=dict)
    model_for_inference: object = None
    trained_state: dict | None = None
    inference_s_per_mp: float | None = None

    def out_of_time(self, reserve: float = 0.0) -> bool:
        return time.monotonic() + reserve > self.deadline

    def step_time(self, name, crop, batch, width, kernel, options) -> float:
        """The measured step time of a configuration, measuring it if need be."""
        from benchbio.registry import METHODS

        variant = "amp + channels-last"
        if self.tiny:  # a check of the code path: never a paper-scale step on a CPU
            crop, batch, width, kernel = (self.scale["crop"], self.scale["batches"][0],
                                          self.scale["width"], self.scale["kernel_size"])
        key = (name, crop, batch, width, kernel, variant)
        if key not in self.step_times:
            extra = {k: v for k, v in options.items() if k in METHODS.create(name).options()}
            extra.update({"width": width, "kernel_size": kernel})
            if self.fit_steps is not None and "search_steps" in METHODS.create(name).options():
                extra["search_steps"] = self.fit_steps
            method = METHODS.create(name, **extra)
            method.fit(self.samples, seed=0)
            batch_data = make_batch(method, self.samples, crop, batch, self.dataset.fg_at_test)
            self.step_times[key] = time_steps(method, self.dataset.in_channels, batch_data,
                                              self.device, variant, self.steps,
                                              self.warmup).seconds
        return self.step_times[key]


# ---------------------------------------------------------------------------- pack
def pack_cvppp(source: str, dest: str) -> int:
    """A compact, pixel-identical copy of CVPPP A1 to carry to a GPU machine."""
    from PIL import Image

    from benchbio.datasets.cvppp import get_cvppp_paths
    from benchbio.registry import DATASETS

    paths = get_cvppp_paths(source)
    folder = Path(dest) / "cvppp2017_lsc" / "training" / "A1"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (rgb, label) in paths.items():
        Image.open(rgb).convert("RGB").save(folder / f"{name}_rgb.png", optimize=True)
        (folder / f"{name}_label.png").write_bytes(Path(label).read_bytes())
    original, packed = DATASETS.create("cvppp", data_dir=source), DATASETS.create(
        "cvppp", data_dir=dest)
    for split in ("train", "val", "test"):
        for a, b in zip(original.split(split), packed.split(split), strict=True):
            if a.name != b.name or not (np.array_equal(a.image, b.image)
                                        and np.array_equal(a.instances, b.instances)):
                print(f"packed {b.name} differs from the original", file=sys.stderr)
                return 1
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"wrote {len(paths)} image pairs to {folder} ({size:.1f} MiB); every sample loads "
          "identical to the original")
    return 0


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--tiny", action="store_true",
                   help="tiny networks and crops: checks the script, measures nothing useful")
    p.add_argument("--out", default=str(REPO / "results" / "bench" / "gpu.md"))
    p.add_argument("--data-dir", default=None,
                   help="where cvppp2017_lsc is (e.g. the carried .gpudata); default: "
                        "../shared/data beside the checkout, if there")
    p.add_argument("--budget-minutes", type=float, default=8.0)
    p.add_argument("--train-minutes", type=float, default=None,
                   help="length of (d) (default 2; 0.2 with --tiny)")
    p.add_argument("--workers", type=int, default=None,
                   help="loader workers (default: CPUs - 2, at most 12; 0 with --tiny)")
    p.add_argument("--skip", default="", help="sections to leave out, e.g. a,c")
    p.add_argument("--pack-cvppp", nargs=2, metavar=("SRC", "DEST"),
                   help="write a compact copy of CVPPP A1 to carry, and stop")
    a = p.parse_args(argv)
    if a.pack_cvppp:
        return pack_cvppp(*a.pack_cvppp)
    from benchbio.runtime import resolve_device

    device = resolve_device(a.device)
    start = time.monotonic()
    shared = REPO.parent / "shared" / "data"
    data_dir = a.data_dir or (str(shared) if shared.is_dir() else None)
    tiny = a.tiny
    ctx = Context(
        device=device, tiny=tiny, scale=TINY if tiny else PAPER,
        deadline=start + 60 * a.budget_minutes, data_dir=data_dir,
        workers=a.workers if a.workers is not None else (
            0 if tiny else max(0, min(12, (os.cpu_count() or 2) - 2))),
        train_minutes=a.train_minutes if a.train_minutes is not None else (0.2 if tiny else 2),
        steps=2 if tiny else 10, warmup=1 if tiny else 3, fit_steps=20 if tiny else 50,
        compile_backend="eager" if device.type == "cpu" else None,
        inference_images=2 if tiny else 8, reserve_after_b=0 if tiny else 200,
    )
    skip = set(filter(None, a.skip.split(",")))
    command = "python benchmarks/gpu_check.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    report = Report(Path(a.out), [
        "# The GPU path: validation and measurements (issue 17)", "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}; git commit: "
        f"{commit()}; command: `{command}`",
        *environment(device),
        f"- scale: {'TINY (a check of the script, not figures)' if tiny else 'paper'}: "
        f"{ctx.scale}",
    ])
    report.write()
    ctx.dataset_name, ctx.dataset, ctx.samples = training_samples(
        data_dir, tiny, 4 if tiny else 16)
    sections = [
        ("a", "(a) CUDA tests", lambda: cuda_tests(timeout=240)),
        ("b", "(b) Training throughput at paper scale", lambda: training_throughput(ctx)),
        ("d", "(d) Short harmonic training", lambda: short_training(ctx)),
        ("c", "(c) Inference per megapixel", lambda: inference(ctx)),
        ("e", "(e) Projected wall-clock time of the study specs", lambda: projections(ctx)),
    ]
    for key, title, run in sections:
        if key in skip:
            continue
        log(f"{title} ...")
        t0 = time.monotonic()
        try:
            lines = run()
        except CheckFailed as exc:
            report.failures.append(f"{title}: {exc}")
            lines = exc.lines + ["", f"**FAILED**: {exc}"]
        except Exception as exc:  # record it and go on: the other sections still count
            report.failures.append(f"{title}: {type(exc).__name__}: {exc}")
            lines = ["**FAILED**:", "", "```", *traceback.format_exc().splitlines()[-15:], "```"]
        report.add(f"{title} ({time.monotonic() - t0:.0f} s)", lines)
        log(f"{title}: {time.monotonic() - t0:.0f} s")
    total = time.monotonic() - start
    report.header.append(f"- total: {total:.0f} s; "
                         + (f"FAILED: {'; '.join(report.failures)}" if report.failures
                            else "every section passed"))
    report.write()
    log(f"wrote {report.path} ({total:.0f} s)")
    return 1 if report.failures else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
