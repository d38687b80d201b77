"""Benchmark: what the per-epoch checkpoint costs next to the training it protects.

Run ``python benchmarks/bench_checkpoint.py``; it writes ``results/bench/checkpoint.md``.
For the README's main command (harmonic, width 16, 3x3 SinConv, batch 16 of 64x64 crops)
and the paper's network (width 64, 7x7 SinConv), it times, in one process and
interleaved so that a busy machine slows both alike: one training step (forward,
backward, Adam) and one ``last.pt`` as ``train`` writes it (model, Adam state, RNG
states; ``torch.save`` to a temporary file, fsync, rename).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchbio.checkpoint import rng_state, save_atomic  # noqa: E402
from benchbio.registry import DATASETS, METHODS  # noqa: E402

CASES = {  # name: (method options, batch, crop)
    "main command (width 16, 3x3)": ({"width": 16, "kernel_size": 3}, 16, 64),
    "paper network (width 64, 7x7)": ({"width": 64, "kernel_size": 7}, 4, 128),
}


def measure(options: dict, batch: int, crop: int, repeats: int, folder: Path) -> dict:
    dataset = DATASETS.create("synthetic-cells", n_train=4, n_val=1, n_test=1)
    method = METHODS.create("harmonic", search=False, **options)
    train = list(dataset.split("train"))
    method.fit(train, seed=0)
    model = method.build_model(dataset.in_channels)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, dataset.in_channels, crop, crop)
    instances = np.zeros((crop, crop), np.int64)
    instances[4:20, 4:20], instances[30:50, 20:60] = 1, 2
    per_crop = [method.targets(instances, None) for _ in range(batch)]
    targets = {k: torch.from_numpy(np.stack([t[k] for t in per_crop])) for k in per_crop[0]}

    def step() -> None:
        opt.zero_grad()
        method.loss(model(x), targets).backward()
        opt.step()

    def save() -> None:
        save_atomic(folder / "last.pt", {"model": model.state_dict(),
                                         "optimizer": opt.state_dict(), "rng": rng_state()})

    step()  # warm-up; creates Adam's state
    steps, saves = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        steps.append(time.perf_counter() - t)
        t = time.perf_counter()
        save()
        saves.append(time.perf_counter() - t)
    return {"params": sum(p.numel() for p in model.parameters()),
            "mb": (folder / "last.pt").stat().st_size / 1e6,
            "step": statistics.median(steps), "save": statistics.median(saves)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "checkpoint.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (options, batch, crop) in CASES.items():
            r = measure(options, batch, crop, args.repeats, Path(tmp))
            rows.append(f"| {name} | {r['params'] / 1e6:.2f} M | {r['mb']:.1f} MB | "
                        f"{r['save'] * 1e3:.0f} ms | {batch} x {crop}x{crop}: "
                        f"{r['step'] * 1e3:.0f} ms | {r['save'] / r['step']:.2f} |")
            print(rows[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    text = "\n".join([
        "# Per-epoch checkpoint cost",
        "",
        f"`python benchmarks/bench_checkpoint.py` on {platform.processor() or platform.machine()}"
        f", {torch.get_num_threads()} torch threads, commit {commit}, "
        f"{datetime.date.today()}, {os.cpu_count()} cores, load average {load:.1f} at the "
        f"start; medians of {args.repeats} interleaved repeats. A load above the core count "
        "slows the (CPU-bound) step more than the (disk-bound) save: re-measure on a quiet "
        "machine for the ratio you will see.",
        "",
        "| network | parameters | last.pt | save (atomic, fsync) | one training step (CPU) "
        "| save / step |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "A run saves `last.pt` once per epoch, so the overhead per epoch is the last column "
        "divided by the steps in an epoch.",
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
