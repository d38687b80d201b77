"""How crowded a dataset is: objects per image, object size and foreground share.

The harmonic method's defaults (12 guides, margin 0.5, frequencies up to 50 radians per
image extent) were set on the paper's datasets; this script puts a dataset's training
images beside them in those terms, as a markdown table:

    python benchmarks/dataset_regime.py synthetic-cells synthetic-cells:tissue=0.3 \\
        cvppp celegans --data-dir ../shared/data
"""

from __future__ import annotations

import argparse

import numpy as np

from benchbio.instances import to_stack
from benchbio.options import parse_assignments
from benchbio.registry import DATASETS


def regime(name: str, data_dir: str | None, images: int) -> dict[str, float]:
    """Median/mean objects per image, median equivalent diameter over the image's
    geometric-mean side, and mean foreground share of the first ``images`` train images."""
    dataset_name, _, opts = name.partition(":")
    options = parse_assignments(tuple(o for o in opts.split(",") if o), "option")
    ds = DATASETS.create(dataset_name, data_dir=data_dir, **options)
    counts, diameters, fg = [], [], []
    for sample in list(ds.split("train"))[:images]:
        stack = to_stack(sample.instances)
        h, w = stack.shape[-2:]
        areas = stack.reshape(len(stack), -1).sum(1)
        counts.append(len(stack))
        diameters.extend(np.sqrt(4 * areas / np.pi) / np.sqrt(h * w))
        fg.append(stack.any(0).mean())
    return {"dataset": name, "images": len(counts), "objects_median": float(np.median(counts)),
            "objects_mean": float(np.mean(counts)), "diameter": float(np.median(diameters)),
            "foreground": float(np.mean(fg))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("datasets", nargs="+", help="NAME or NAME:key=value,key=value")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--images", type=int, default=40, help="train images per dataset")
    a = p.parse_args()
    print("| dataset | train images read | objects per image (median / mean) "
          "| median object diameter / image side | foreground share |")
    print("|---|---:|---:|---:|---:|")
    for name in a.datasets:
        r = regime(name, a.data_dir, a.images)
        print(f"| `{r['dataset']}` | {r['images']} | {r['objects_median']:.1f} / "
              f"{r['objects_mean']:.1f} | {r['diameter']:.3f} | {r['foreground']:.2f} |")


if __name__ == "__main__":
    main()
