"""The ceiling of a harmonic-family method's overfit check: its own perfect targets, clustered.

On the overfit check's image (``Method.overfit``, see :mod:`benchbio.overfit`), the method
is fitted as the check fits it (guide start and search, seed 0), its eq. 1-2 targets are
handed to its own post-processing as if a network had output them exactly, and the result
is scored with the check's metric. A network trained on that image cannot be expected to
beat this figure (results/bench/overfit.md), so it says whether a failed check is the
targets' doing or the network's. One torch thread:

    python benchmarks/overfit_target_ceiling.py harmonic harmonic-random harmonic-high
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchbio.datasets.synthetic import OVERFIT_CHECK
from benchbio.methods.harmonic import Harmonic, expand_targets
from benchbio.overfit import check_of
from benchbio.registry import DATASETS, METHODS
from benchbio.training import _metric_of, evaluate_samples


def ceiling(name: str, seed: int = 0) -> float:
    """The check's metric of ``name``'s post-processing applied to its own targets."""
    check = check_of(name, OVERFIT_CHECK)
    method = METHODS.create(name, **check.options)
    if not isinstance(method, Harmonic):
        raise SystemExit(f"{name} is not a harmonic-family method (its targets are not "
                         "its network's output)")
    dataset = DATASETS.create(check.dataset, **{"n_train": 1, "n_val": 1, "n_test": 1,
                                                **check.dataset_options})
    sample = dataset.split("train")[0]
    fg = sample.fg if dataset.fg_at_test else None
    min_area = method.opts.min_area if method.opts.min_area is not None else dataset.min_area
    method.fit([sample], seed=seed)
    compact = {k: torch.from_numpy(np.ascontiguousarray(v))[None]
               for k, v in method.targets(np.asarray(sample.instances), fg).items()}
    embedding = expand_targets(compact)["embedding"][0]
    pred = method.postprocess(embedding, fg, min_area)
    scored = evaluate_samples([pred], [sample], [_metric_of(check.metric)])
    return float(scored.mean[check.metric])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("methods", nargs="+", help="harmonic-family method names")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    print("| method | metric | ceiling |\n|---|---|---:|")
    for name in a.methods:
        check = check_of(name, OVERFIT_CHECK)
        print(f"| `{name}` | {check.metric} | {ceiling(name, a.seed):.3f} |", flush=True)


if __name__ == "__main__":
    main()
