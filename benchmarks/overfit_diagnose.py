"""Why a harmonic-family overfit check fails: the trained network, clustered otherwise.

Runs a method's overfit check (:func:`benchbio.overfit.overfit`, one torch thread, seed 0)
with some of its fields or the method's options replaced, then takes the network as
trained and reports, for its output on the check's image:

- the check's metric under each torch mean-shift kernel ("flat", "gaussian") and under
  scikit-learn's ``MeanShift`` (the authors' clusterer), through the harness's
  prediction path (``training.predict_samples``), the method's other options unchanged:
  is it the network or the clustering that fails?
- the instances that match no true object (best Dice < 0.5), with their size, the true
  label most of their pixels carry (0: background) and their pixels' median distance
  to the nearest true object (1: a ring touching an object);
- for every true object, its best Dice and the median L2 distance of its pixels'
  embeddings to their target (eq. 1-2).

It tells a slow network from a kernel that splits or merges what the network got nearly
right (results/bench/overfit.md, "Declared out of the suite"). Examples:

    python benchmarks/overfit_diagnose.py harmonic-authors --steps 600
    python benchmarks/overfit_diagnose.py harmonic --steps 600 --set sinconv_norm=false
    python benchmarks/overfit_diagnose.py harmonic-noguide --steps 1100 --lr 3e-3 \\
        --schedule cosine
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from benchbio.datasets.synthetic import OVERFIT_CHECK
from benchbio.method import OverfitCheck
from benchbio.methods.harmonic import Harmonic, expand_targets
from benchbio.nets import divisor_of, pad_to_divisor
from benchbio.options import parse_assignments
from benchbio.overfit import check_image, check_of, overfit
from benchbio.training import _metric_of, evaluate_samples, predict_samples

#: The post-processings compared: the torch mean-shift's kernels and scikit-learn's.
CLUSTERINGS = {"flat": {"cluster_kernel": "flat", "clusterer": "torch"},
               "gaussian": {"cluster_kernel": "gaussian", "clusterer": "torch"},
               "sklearn": {"clusterer": "sklearn"}}


def _best_dice(mask: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Best Dice of ``mask`` with any nonzero label of ``labels``, and that label."""
    best, which = 0.0, 0
    for j in np.unique(labels[mask]):
        if j:
            other = labels == j
            dice = 2.0 * (mask & other).sum() / (mask.sum() + other.sum())
            if dice > best:
                best, which = float(dice), int(j)
    return best, which


def diagnose(name: str, check: OverfitCheck, seed: int = 0,
             on_eval: Callable[[int, float, float, float], None] | None = None) -> list[str]:
    """Run ``check`` for method ``name`` to its last step and return the report's lines
    (module docstring): each clustering's score and unmatched instances, then every
    true object's best Dice (under the method's own clustering) and embedding error."""
    check = dataclasses.replace(check, threshold=2.0)  # never stop early: the budget's
    result = overfit(name, check, seed=seed, on_eval=on_eval)  # last network is diagnosed
    method, model = result.method_state, result.model
    if not isinstance(method, Harmonic):
        raise SystemExit(f"{name} is not a harmonic-family method")
    where = check_image(check, method)
    dataset, sample, fg, min_area = where.dataset, where.sample, where.fg, where.min_area
    truth = np.asarray(sample.instances)
    if truth.ndim != 2:
        raise SystemExit("the diagnosis reads a label image; this check's objects overlap")
    lines = [f"{name}: options {check.options}, lr {check.lr:g} {check.lr_schedule}, "
             f"{result.steps} steps, {result.train_cpu_seconds:.0f} CPU s of training; "
             f"own clustering {method.opts.clusterer} {method.opts.cluster_kernel}"]
    to_object = ndimage.distance_transform_edt(truth == 0)
    own = None
    for label, options in CLUSTERINGS.items():
        variant = Harmonic(**{**method.options(), **options})
        variant.guides = method.guides
        pred = predict_samples(variant, model, [sample], torch.device("cpu"),
                               fg_at_test=dataset.fg_at_test, min_area=min_area)[0]
        score = evaluate_samples([pred], [sample], [_metric_of(check.metric)])
        labels = np.asarray(pred.labels)
        unmatched = [(int((labels == j).sum()), int(np.bincount(truth[labels == j]).argmax()),
                      round(float(np.median(to_object[labels == j])), 1))
                     for j in np.unique(labels)[1:]
                     if _best_dice(labels == j, truth)[0] < 0.5]
        lines.append(f"  {label}: {check.metric} {score.mean[check.metric]:.3f}, "
                     f"{len(np.unique(labels)) - 1} instances for {len(np.unique(truth)) - 1} "
                     "true; unmatched (pixels, mostly true label, median px to an object): "
                     f"{unmatched}")
        if own is None and all(method.options()[k] == v for k, v in options.items()):
            own = labels
    targets = expand_targets({k: torch.from_numpy(np.ascontiguousarray(v))[None]
                              for k, v in method.targets(truth, fg).items()})
    model.eval()
    with torch.no_grad():
        image = torch.from_numpy(np.ascontiguousarray(sample.image))[None]
        h, w = image.shape[-2:]
        output = model(pad_to_divisor(image, divisor_of(model)))[0, : method.opts.n_guides,
                                                                   :h, :w]
    error = (output - targets["embedding"][0]).norm(dim=0).numpy()
    lines.append(f"  median embedding error: objects {np.median(error[truth > 0]):.3f}, "
                 f"background {np.median(error[truth == 0]):.3f}")
    for label in np.unique(truth)[1:]:
        mask = truth == label
        dice, which = _best_dice(mask, own)
        lines.append(f"  object {label}: {mask.sum()} px, best Dice {dice:.3f} (instance "
                     f"{which}, {int((own == which).sum()) if which else 0} px), median "
                     f"error {np.median(error[mask]):.3f}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", help="a harmonic-family method name")
    p.add_argument("--steps", type=int, default=None, help="step budget (default: the check's)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--schedule", default=None, help="lr schedule (default: the check's)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a method option on top of the check's options (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    check = check_of(a.method, OVERFIT_CHECK)
    check = dataclasses.replace(
        check, options={**check.options, **parse_assignments(a.set, "--set")},
        lr=a.lr if a.lr is not None else check.lr,
        lr_schedule=a.schedule or check.lr_schedule,
        steps=a.steps if a.steps is not None else check.steps)

    def report(step: int, score: float, cpu: float, seconds: float) -> None:
        print(f"  step {step} {check.metric} {score:.3f} ({cpu:.0f} CPU s)", file=sys.stderr,
              flush=True)

    print("\n".join(diagnose(a.method, check, a.seed, report)))


if __name__ == "__main__":
    main()
