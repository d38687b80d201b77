"""Guide starts and searches on synthetic-cells, without training a network.

For each configuration (family, frequency range, search metric and margin, background
as an object), the guide search's figures (eq. 4 hinge and separated fraction before and
after, largest parameter change) and how well the searched guides can be clustered:
validation SBD of modelled outputs ``target + alpha * (guide - target)`` (alpha 0:
perfect targets; alpha 0.3: a half-trained network that still follows the local guide
value a little, authors-guides.md's model) under harmonic's L2 mean-shift. Also the
floor of the dataset: SBD of the connected components of the true foreground.

    python benchmarks/guide_starts.py --tissue 0.3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy import ndimage as ndi

from benchbio.cluster import embeddings_to_labels
from benchbio.guides import Guides, sample_guides, search_guides
from benchbio.methods.harmonic import harmonic_targets
from benchbio.registry import DATASETS
from benchbio.training import evaluate_samples

CONFIGS = [  # tag, family, range, metric, margin, background
    ("oblique U(0,50), l1 0.5 (paper)", "oblique", (0, 50), "l1", 0.5, False),
    ("oblique U(0,50), l2 1.0", "oblique", (0, 50), "l2", 1.0, False),
    ("axis +-25, no search", "axis", (0, 25), None, 0.5, False),
    ("axis +-25, l1 0.5", "axis", (0, 25), "l1", 0.5, False),
    ("axis +-25, l2 0.5", "axis", (0, 25), "l2", 0.5, False),
    ("axis +-25, sql2 0.5 + bg (authors)", "axis", (0, 25), "sql2", 0.5, True),
    ("axis +-25, l2 1.0", "axis", (0, 25), "l2", 1.0, False),
    ("axis +-25, l2 1.5", "axis", (0, 25), "l2", 1.5, False),
    ("axis +-12.5, no search", "axis", (0, 12.5), None, 0.5, False),
    ("axis +-50, no search", "axis", (0, 50), None, 0.5, False),
    ("axis +-5, no search", "axis", (0, 5), None, 0.5, False),
    ("axis +-5, l2 0.5", "axis", (0, 5), "l2", 0.5, False),
    ("axis +-5, l2 1.0", "axis", (0, 5), "l2", 1.0, False),
    ("axis +-5, sql2 0.5 + bg", "axis", (0, 5), "sql2", 0.5, True),
    ("axis +-12.5, l2 1.0", "axis", (0, 12.5), "l2", 1.0, False),
    ("axis +-2.5, l2 0.5", "axis", (0, 2.5), "l2", 0.5, False),
]


def modelled_sbd(guides: Guides, samples, alpha: float, min_area: int) -> float:
    preds = []
    for s in samples:
        t = harmonic_targets(guides, s.instances, None)["embedding"]
        g = guides.maps(*s.instances.shape[-2:]).astype(np.float32)
        out = torch.from_numpy(t + alpha * (g - t))
        preds.append(embeddings_to_labels(out, 0.5, metric="l2", min_area=min_area))
    return round(float(evaluate_samples(preds, samples, ["sbd"]).mean["sbd"]), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tissue", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", type=int, nargs="*", help="indices of CONFIGS to run")
    a = p.parse_args()
    torch.set_num_threads(1)
    ds = DATASETS.create("synthetic-cells", tissue=a.tissue)
    train = [s.instances for s in ds.split("train")]
    val = list(ds.split("val"))
    cc = [ndi.label(s.instances > 0)[0] for s in val]
    floor = evaluate_samples(cc, val, ["sbd"]).mean["sbd"]
    test = list(ds.split("test"))
    cc_test = [ndi.label(s.instances > 0)[0] for s in test]
    print(json.dumps({"tissue": a.tissue, "connected_components_sbd_val": round(floor, 3),
                      "connected_components_sbd_test": round(
                          evaluate_samples(cc_test, test, ["sbd"]).mean["sbd"], 3)}), flush=True)
    for i, (tag, family, rng, metric, margin, bg) in enumerate(CONFIGS):
        if a.only and i not in a.only:
            continue
        t0 = time.time()
        start = sample_guides(12, rng, 128.0, 128.0, np.random.default_rng(a.seed), family)
        guides, fig = search_guides(train, start=start, metric=metric or "l2", eps=margin,
                                    background=bg, steps=400 if metric else 0, seed=a.seed)
        row = {"config": tag, **{k: round(v, 4) for k, v in fig.items()},
               "median_abs_freq": round(float(np.median(np.abs(guides.params[:, :2]).max(1))), 1),
               "sbd_alpha0": modelled_sbd(guides, val, 0.0, ds.min_area),
               "sbd_alpha0.3": modelled_sbd(guides, val, 0.3, ds.min_area),
               "seconds": round(time.time() - t0)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
