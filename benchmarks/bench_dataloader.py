"""Benchmark: the training data path on the CPU, in samples per second per loader worker.

Run ``python benchmarks/bench_dataloader.py`` (``--help`` for the options). For every
registered method (from the registry, so a new method is measured without editing this
file) it times what one DataLoader worker does per training sample: the random
augmentation of a kept, already decoded image (rescale, ``--crop`` window, flip), the
method's targets, and the collation of ``--batch`` samples into a batch. One torch
thread, no worker processes: the figure is what each of N workers adds, so N workers
feed about N times it. What a method builds from the whole batch on the training device
(``Method.device_targets``, e.g. PatchPerPix's patches) is not the workers' work: it is
timed apart, here on the CPU, and reported in its own column (CPU ms per sample). Methods
are timed in rotating order over ``--rounds`` rounds in one process and the median is
reported, so their figures are comparable even on a shared machine. Decoding is timed
once per image (images are decoded once and kept).

Images: CVPPP A1 (530 x 500) from ``--data-dir`` when present, else synthetic-cells
generated at ``--size`` (512) pixels. ``--reference`` adds, for each method, the data
path as it was before issue 17 (the reference implementations kept in
``tests/test_data_path.py``, and PatchPerPix's dense per-crop patches from
``tests/test_methods_patchperpix.py``), measured in the same rounds.

Writes Markdown to ``results/bench/dataloader.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_metrics import _machine  # noqa: E402

_MEASURED = ("benchbio/training.py", "benchbio/instances.py", "benchbio/method.py",
             "methods", "benchmarks")


def commit() -> str:
    """Short HEAD, marked when the measured files have uncommitted changes."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *_MEASURED],
            cwd=REPO, capture_output=True, text=True).stdout.strip()
        return (head or "unknown") + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def load_images(dataset: str, data_dir: str | None, images: int, size: int):
    """(dataset, the first ``images`` training samples, seconds per decoded image)."""
    from benchbio.registry import DATASETS

    options = {"size": size, "n_train": images} if dataset.startswith("synthetic") else {}
    ds = DATASETS.create(dataset, data_dir=data_dir, **options)
    split = ds.split("train")
    start = time.perf_counter()
    samples = [split[i] for i in range(min(images, len(split)))]
    return ds, samples, (time.perf_counter() - start) / len(samples)


def fast_fit_options(method_name: str) -> dict:
    """A short guide search where a method has one: the targets' cost does not depend
    on which guides were found."""
    from benchbio.registry import METHODS

    probe = METHODS.create(method_name)
    return {"search_steps": 20} if "search_steps" in probe.options() else {}


@contextlib.contextmanager
def reference_code():
    """Within the block, ``relabel``, ``sequential``, ``augment`` and harmonic's (dense)
    targets are the pre-issue-17 versions kept in ``tests/test_data_path.py``, and
    PatchPerPix builds its dense patches per crop in the worker (no device targets)."""
    sys.path.insert(0, str(REPO / "tests"))
    import test_data_path as ref
    import test_methods_patchperpix as ref_ppp

    import benchbio.instances as instances
    import benchbio.methods.harmonic as harmonic
    import benchbio.methods.patchperpix as patchperpix
    import benchbio.training as training
    from benchbio.method import Method

    def dense_targets(self, instances_, fg, origin=(0, 0)):
        return ref.reference_harmonic_targets(self._require_guides(), instances_, fg, origin,
                                              self.opts.pixel_weight)

    def dense_patches(self, instances_, fg, origin=(0, 0)):
        return ref_ppp.reference_patchperpix_targets(self, np.asarray(instances_))

    swaps = [(instances, "relabel", ref.reference_relabel),
             (instances, "sequential", ref.reference_sequential),
             (training, "augment", ref.reference_augment),
             (harmonic.Harmonic, "targets", dense_targets),
             (patchperpix.PatchPerPix, "targets", dense_patches),
             (patchperpix.PatchPerPix, "device_targets", Method.device_targets)]
    saved = [getattr(module, name) for module, name, _ in swaps]
    for module, name, value in swaps:
        setattr(module, name, value)
    try:
        yield
    finally:
        for (module, name, _), value in zip(swaps, saved):
            setattr(module, name, value)


class Timed:
    """One method's ``CropDataset``, timed as a loader worker uses it: items, then
    collation of whole batches. The augmentation alone is timed apart, on the same
    random draws, to split an item's time into augmentation and targets."""

    def __init__(self, name: str, samples, dataset, crop: int, batch: int, reference: bool):
        from benchbio.registry import METHODS
        from benchbio.training import CropDataset

        self.name, self.reference, self.batch = name, reference, batch
        self.method = METHODS.create(name, **fast_fit_options(name))
        self.method.fit(samples, seed=0)
        self.crops = CropDataset(samples, self.method, crop, (0.8, 1.25), 0,
                                 dataset.fg_at_test)
        self.rates: list[float] = []
        self.cpu_rates: list[float] = []  # per CPU-second of this process: load-independent
        self.stages: dict[str, list[float]] = {"item": [], "augment": [], "collate": [],
                                               "device": []}
        self.batch_bytes = 0

    @property
    def label(self) -> str:
        return f"{self.name} (before #17)" if self.reference else self.name

    def round(self, epoch: int, count: int) -> None:
        """Time ``count`` items (collated in batches) of epoch ``epoch``."""
        import benchbio.training as training
        from benchbio.training import collate_crops

        with reference_code() if self.reference else contextlib.nullcontext():
            self.crops.epoch = epoch
            t_item = t_col = t_aug = cpu_dev = 0.0
            items = []
            cpu0 = time.process_time()
            for k in range(count):
                t0 = time.perf_counter()
                items.append(self.crops[k % len(self.crops)])
                t_item += time.perf_counter() - t0
                if len(items) == self.batch:
                    t1 = time.perf_counter()
                    collated = collate_crops(items)
                    t_col += time.perf_counter() - t1
                    self.batch_bytes = sum(v.numel() * v.element_size()
                                           for v in collated.values())
                    items = []
                    # the device's part (the training step's), timed apart from the worker's
                    c1 = time.process_time()
                    self.method.device_targets(collated)
                    cpu_dev += time.process_time() - c1
                    del collated
            cpu = time.process_time() - cpu0 - cpu_dev
            for k in range(count):  # the augmentation alone, same draws
                index = k % len(self.crops)
                rng = np.random.default_rng([self.crops.seed, epoch, index])
                t0 = time.perf_counter()
                training.augment(self.crops.samples[index], self.crops.crop,
                                 self.crops.scale, rng)
                t_aug += time.perf_counter() - t0
        self.rates.append(count / (t_item + t_col))
        self.cpu_rates.append(count / max(cpu, 1e-9))
        for key, value in (("item", t_item), ("augment", t_aug), ("collate", t_col),
                           ("device", cpu_dev)):  # the device's part in CPU seconds
            self.stages[key].append(1000 * value / count)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="auto",
                   help="a dataset name, or auto: cvppp when --data-dir has it, else "
                        "synthetic-cells at --size")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--size", type=int, default=512, help="synthetic image size (pixels)")
    p.add_argument("--images", type=int, default=8, help="training images kept in memory")
    p.add_argument("--crop", type=int, default=448)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--samples", type=int, default=16, help="samples per method and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--methods", nargs="*", help="default: every registered method")
    p.add_argument("--reference", action="store_true",
                   help="also time the pre-issue-17 data path, side by side")
    p.add_argument("--target", type=float, default=25.0,
                   help="samples/s per worker a method should reach")
    p.add_argument("--out", default=str(REPO / "results" / "bench" / "dataloader.md"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from benchbio.registry import METHODS

    dataset = a.dataset
    if dataset == "auto":
        dataset = "cvppp" if (Path(a.data_dir) / "cvppp2017_lsc").is_dir() else "synthetic-cells"
    data_dir = a.data_dir if dataset != "synthetic-cells" else None
    load_before = os.getloadavg()[0]
    ds, samples, decode_s = load_images(dataset, data_dir, a.images, a.size)
    shape = samples[0].image.shape
    names = a.methods or METHODS.names()
    runs = []
    for name in names:
        runs.append(Timed(name, samples, ds, a.crop, a.batch, reference=False))
        if a.reference:
            runs.append(Timed(name, samples, ds, a.crop, a.batch, reference=True))
    for timed in runs:
        timed.round(epoch=10_000, count=min(a.batch, a.samples))  # warm-up: caches, pages
        timed.rates.clear()
        timed.cpu_rates.clear()
        for stage in timed.stages.values():
            stage.clear()
    for r in range(a.rounds):
        shift = r % len(runs)
        for timed in runs[shift:] + runs[:shift]:
            timed.round(epoch=r, count=a.samples)
    load_after = os.getloadavg()[0]
    lines = render(a, argv, dataset, shape, decode_s, runs, load_before, load_after)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def render(a, argv, dataset, shape, decode_s, runs, load_before, load_after) -> list[str]:
    command = "python benchmarks/bench_dataloader.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    lines = [
        "# Training data path: samples per second per loader worker",
        "",
        f"- date: {datetime.date.today().isoformat()}; git commit: {commit()}",
        f"- machine: {_machine()}; torch {torch.__version__}, 1 thread, no worker processes",
        f"- load average (1 min) before / after: {load_before:.1f} / {load_after:.1f} on "
        f"{os.cpu_count()} logical CPUs. Samples per CPU-second (this single-threaded "
        "process's CPU time) is what one worker with a core to itself delivers, whatever "
        "the load; wall-clock rates fall with the load (rates of one run compare)",
        f"- images: {len(runs[0].crops)} training images of `{dataset}` "
        f"({shape[0]} x {shape[1]} x {shape[2]}), decoded once and kept "
        f"(decoding: {1000 * decode_s:.0f} ms per image, once)",
        f"- per sample: random rescale (0.8-1.25), {a.crop} x {a.crop} crop, flip, the "
        f"method's targets; per batch of {a.batch}: collation. Median of {a.rounds} "
        f"rounds of {a.samples} samples per method, methods in rotating order",
        f"- command: `{command}`",
        "",
        f"| method | samples per CPU-second (median) | samples/s, wall clock | range over "
        f"rounds (wall) | ms per sample: augment | "
        f"targets ms (item - augment) | collate ms | batch of {a.batch} (MB) | "
        f">= {a.target:g}/s | device targets: CPU ms per sample |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: |",
    ]
    for t in runs:
        rate, cpu_rate = statistics.median(t.rates), statistics.median(t.cpu_rates)
        aug, item = (statistics.median(t.stages[k]) for k in ("augment", "item"))
        lines.append(
            f"| {t.label} | {cpu_rate:.1f} | {rate:.1f} | {min(t.rates):.1f}-{max(t.rates):.1f} | "
            f"{aug:.1f} | {max(item - aug, 0.0):.1f} | "
            f"{statistics.median(t.stages['collate']):.1f} | {t.batch_bytes / 1e6:.0f} | "
            f"{'yes' if cpu_rate >= a.target else 'no'} | "
            f"{statistics.median(t.stages['device']):.1f} |")
    by_label = {t.label: statistics.median(t.cpu_rates) for t in runs}
    pairs = [(t.name, by_label[t.name], by_label[f"{t.name} (before #17)"])
             for t in runs if not t.reference and f"{t.name} (before #17)" in by_label]
    if pairs:
        lines += ["", "Speed-up (samples per CPU-second) of this commit over the pre-issue-17 data "
                  "path, same rounds: "
                  + ", ".join(f"{n} {new / old:.2f}x" for n, new, old in pairs) + "."]
    slowest = min(runs, key=lambda t: statistics.median(t.cpu_rates) if not t.reference
                  else 1e9)
    workers = a.target * 16 / max(statistics.median(slowest.cpu_rates), 1e-9)
    lines += ["", f"The slowest method, {slowest.name}, needs about {workers:.0f} workers, "
              f"one core each, for {a.target * 16:g} samples/s (16 workers at "
              f"{a.target:g}/s); the >= column judges samples per CPU-second. The last "
              "column is what the method builds from each collated batch on the training "
              "device (`Method.device_targets`, part of the training step, not of a "
              "worker's work): CPU milliseconds per sample of this single-threaded process; "
              "0 where the method builds nothing there."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
