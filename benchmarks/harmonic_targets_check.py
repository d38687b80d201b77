"""Can harmonic's searched guides separate a dataset's objects, background included?

Reads a guide set (a run's ``method/guides.json`` or a guide-cache file) and, on a
dataset split, reports how far each object's eq. 1-2 target lies from the background's
target (the largest-cluster rule swallows an object whose target is within the
bandwidth of the background's), and the SBD / DiC of clustering the targets themselves
plus i.i.d. Gaussian noise, as at test time (flat mean-shift, largest cluster =
background, instances below 20 pixels dropped):

    python benchmarks/harmonic_targets_check.py GUIDES.json --dataset synthetic-cells \\
        --data-opt sparse=true

If the targets score near 1 here, what a trained model loses is the network's and the
clustering's, not the guides' or the background rule's. One torch thread.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from benchbio.cluster import embeddings_to_labels
from benchbio.evaluation import evaluate
from benchbio.guides import Guides
from benchbio.methods.harmonic import harmonic_targets
from benchbio.options import parse_assignments
from benchbio.registry import DATASETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guides", help="guides JSON (a run's method/guides.json)")
    parser.add_argument("--dataset", default="synthetic-cells")
    parser.add_argument("--data-opt", action="append", default=[], help="key=value")
    parser.add_argument("--split", default="test")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    parser.add_argument("--eps", type=float, nargs="+", default=[0.5, 0.7])
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = json.loads(open(args.guides).read())
    guides = Guides.from_json(data.get("guides", data))
    dataset = DATASETS.create(args.dataset, **parse_assignments(tuple(args.data_opt), "option"))
    samples = list(dataset.split(args.split))
    targets = [harmonic_targets(guides, s.instances, None)["embedding"] for s in samples]
    distances = []
    for s, t in zip(samples, targets, strict=True):
        background = t[:, s.instances == 0].mean(1)
        distances += [float(np.linalg.norm(t[:, s.instances == k][:, 0] - background))
                      for k in range(1, int(s.instances.max()) + 1)]
    d = np.array(distances)
    print(f"object target to background target, L2: min {d.min():.3f}, median "
          f"{np.median(d):.3f}; objects within 0.5: {(d < 0.5).mean():.3f}, within 1.0: "
          f"{(d < 1.0).mean():.3f} ({len(d)} objects)")
    rng = np.random.default_rng(0)
    print("| noise s.d. | eps | SBD | DiC |\n|---:|---:|---:|---:|")
    for noise in args.noise:
        for eps in args.eps:
            preds = [embeddings_to_labels(
                torch.from_numpy(t + rng.normal(0, noise, t.shape).astype(np.float32)), eps,
                fg=None, min_area=20) for t in targets]
            r = evaluate(preds, [s.instances for s in samples], metrics=["sbd", "dic"]).mean
            print(f"| {noise} | {eps} | {r['sbd']:.3f} | {r['dic']:+.1f} |")


if __name__ == "__main__":
    main()
