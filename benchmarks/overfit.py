"""The overfit check for every registered method, as a table (results/bench/overfit.md).

Each method is trained on one generated image with the settings it declares
(``Method.overfit``, see :mod:`benchbio.overfit`) and scored on that image until it
reaches its threshold (SBD 0.95 on a synthetic-cells clumps image by default; COCO AP
0.9 on a synthetic-worms image for methods whose output may overlap). The test suite
runs the methods whose check is ``in_suite``; this script runs them all:

    python benchmarks/overfit.py --out results/bench/overfit.md
    python benchmarks/overfit.py harmonic embedseg          # a subset, printed only
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
from overfit_target_ceiling import ceiling  # benchmarks/, beside this script

from benchbio.datasets.synthetic import OVERFIT_CHECK
from benchbio.overfit import OverfitResult, check_of, overfit
from benchbio.registry import METHODS


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


HEADER = ("| method | image | network; lr | target | result | steps (taken / budget) "
          "| score | best | ceiling | CPU s (all) | CPU s (training) | wall s | in test suite "
          "| score after N steps |\n"
          "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")


def _row(r: OverfitResult, ceiling_score: float | None) -> str:
    c = r.check
    data = c.dataset + "".join(f", {k}={v}" for k, v in c.dataset_options.items())
    opts = ", ".join(f"{k}={v}" for k, v in c.options.items())
    schedule = "" if c.lr_schedule == "constant" else f" {c.lr_schedule}"
    curve = " ".join(f"{s}:{v:.2f}" for s, v, _, _ in r.history)
    result = "**pass**" if r.passed else "FAIL"
    if c.cannot_pass:
        result += f" (declared: {c.cannot_pass})"
    return (f"| `{r.method}` | {data} | {opts}; lr {c.lr:g}{schedule} "
            f"| {c.metric} >= {c.threshold:g} in {c.cpu_seconds:g} CPU s | {result} "
            f"| {r.steps} / {c.steps} | {r.score:.3f} | {r.best:.3f} "
            f"| {'' if ceiling_score is None else f'{ceiling_score:.3f}'} | {r.cpu_seconds:.0f} "
            f"| {r.train_cpu_seconds:.0f} | {r.seconds:.0f} | {'yes' if c.in_suite else 'no'} "
            f"| {curve} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("methods", nargs="*", help="method names (default: every registered one)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)  # the checks' clock is one thread's CPU time (overfit sets it too)
    names = a.methods or METHODS.names()
    load_before, commit = os.getloadavg()[0], _commit()  # the code that runs is this one
    header = HEADER
    rows: list[str] = []
    print(header, flush=True)
    for name in names:
        def report(step: int, score: float, cpu: float, seconds: float, n: str = name) -> None:
            print(f"  {n}: step {step} score {score:.3f} ({cpu:.0f} CPU s, {seconds:.0f} s)",
                  file=sys.stderr, flush=True)

        result = overfit(name, check_of(name, OVERFIT_CHECK), seed=a.seed, on_eval=report)
        rows.append(_row(result, ceiling(name, a.seed)))
        print(rows[-1], flush=True)
        if a.out is not None:  # after every method, so a long run keeps what it measured
            _write(a.out, header, rows, load_before, commit, len(rows) < len(names))
    if a.out is not None:
        print(f"wrote {a.out}")


def _write(path: Path, header: str, rows: list[str], load_before: float, commit: str,
           partial: bool) -> None:
    text = "\n".join([
        "# Overfit check: every method learns one image",
        "",
        f"`{' '.join(['python', 'benchmarks/overfit.py', *sys.argv[1:]])}` on "
        f"{platform.machine()} ({platform.processor() or 'cpu'}), {os.cpu_count()} logical "
        f"CPUs, 1 torch thread, methods one after another, commit {commit}, "
        f"{datetime.date.today()}; load average (1 min) {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end. The clock of the budget is the CPU time of "
        "the check's single thread (`time.process_time()`), which hardly depends on what "
        "else the machine runs; wall seconds are beside it (above the CPU count the machine "
        "was shared and they are inflated). Steps and scores do not depend on load."
        + (" **Partial: the run was still going.**" if partial else ""),
        "",
        "Each method trains its own network (the options shown) on one whole generated "
        "image with Adam, batch 1, no augmentation, and is scored on that same image every "
        "`eval_every` steps until it reaches its target within its step and CPU budgets "
        "(`Method.overfit`, `benchbio/overfit.py`). CPU s (all) include the method's fit "
        "(e.g. the guide search) and the evaluations; a check stops at the first "
        "evaluation past its CPU budget. **Ceiling**: the check's metric of the method's "
        "own post-processing applied to a perfect network's output on that image "
        "(`Method.ideal_output`, `benchmarks/overfit_target_ceiling.py`): what training "
        "that reproduces the targets reaches (a network's errors can land above it by "
        "chance); empty where the method defines none.",
        "",
        header,
        *rows,
        "",
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
