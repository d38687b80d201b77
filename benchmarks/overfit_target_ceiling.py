"""The ceiling of a method's overfit check: its own perfect output, post-processed.

On the overfit check's image (``Method.overfit``, see :mod:`benchbio.overfit`), the method
is fitted as the check fits it (e.g. harmonic's guide start and search, seed 0), the
output a perfect network would give (``Method.ideal_output``: its targets as the network's
channels) is handed to its own post-processing, and the result is scored with the check's
metric. A network that learns its targets on that image reaches this figure, and is not
expected to beat it (its errors may, by chance: results/bench/overfit.md), so it says
whether a failed check is the targets' and decoder's doing or the network's. One torch thread:

    python benchmarks/overfit_target_ceiling.py harmonic harmonic-random patchperpix
    python benchmarks/overfit_target_ceiling.py patchperpix --set patch_size=15
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchbio.datasets.synthetic import OVERFIT_CHECK
from benchbio.options import parse_assignments
from benchbio.overfit import check_image, check_of
from benchbio.registry import METHODS
from benchbio.training import _metric_of, evaluate_samples


def ceiling(name: str, seed: int = 0, **options) -> float | None:
    """The check's metric of ``name``'s post-processing applied to its ideal output, with
    the check's method options updated by ``options``; None where the method defines no
    ideal output."""
    check = check_of(name, OVERFIT_CHECK)
    method = METHODS.create(name, **{**check.options, **options})
    where = check_image(check, method)
    method.fit([where.sample], seed=seed)
    ideal = method.ideal_output(np.asarray(where.sample.instances), where.fg)
    if ideal is None:
        return None
    pred = method.postprocess(ideal, where.fg, where.min_area)
    scored = evaluate_samples([pred], [where.sample], [_metric_of(check.metric)])
    return float(scored.mean[check.metric])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("methods", nargs="+", help="method names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option on top of the check's (repeatable)")
    a = p.parse_args()
    options = parse_assignments(a.set, "--set")
    torch.set_num_threads(1)
    shown = "".join(f", {k}={v}" for k, v in options.items())
    print("| method | metric | ceiling |\n|---|---|---:|")
    for name in a.methods:
        check = check_of(name, OVERFIT_CHECK)
        value = ceiling(name, a.seed, **options)
        shown_value = "none (no `ideal_output`)" if value is None else f"{value:.3f}"
        print(f"| `{name}`{shown} | {check.metric} | {shown_value} |", flush=True)


if __name__ == "__main__":
    main()
