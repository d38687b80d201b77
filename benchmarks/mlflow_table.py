"""Write a Markdown table of test metrics from the MLflow runs of one experiment.

Rows are methods, columns test metrics, mean +- std over the finished runs (seeds) of
each method; the runs' commit and device are listed under the table.

    python benchmarks/mlflow_table.py --experiment EXP --metrics sbd,abs_dic --out FILE.md
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def main() -> None:
    import mlflow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--metrics", default="sbd,abs_dic,fg_bg_dice,dsb_accuracy")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    keys = [k.strip() for k in args.metrics.split(",") if k.strip()]
    runs = mlflow.search_runs(experiment_names=[args.experiment], output_format="list",
                              filter_string="attributes.status = 'FINISHED'")
    if not runs:
        raise SystemExit(f"no finished runs in experiment {args.experiment!r}")
    by_method: dict[str, list] = defaultdict(list)
    for r in runs:
        by_method[r.data.tags.get("method", "?")].append(r)
    lines = [f"# {args.title or args.experiment}", ""]
    lines.append("| method | runs | " + " | ".join(keys) + " | seconds |")
    lines.append("|---|---:|" + "---:|" * (len(keys) + 1))
    for method in sorted(by_method):
        group = by_method[method]
        cells = []
        for key in keys + ["run_seconds"]:
            name = key if key == "run_seconds" else f"test_{key}"
            vals = np.array([r.data.metrics[name] for r in group if name in r.data.metrics])
            if len(vals) == 0:
                cells.append("-")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.3f}" if key != "run_seconds" else f"{vals[0]:.0f}")
            else:
                cells.append(f"{vals.mean():.3f} +- {vals.std(ddof=1):.3f}"
                             if key != "run_seconds" else f"{vals.mean():.0f}")
        lines.append(f"| {method} | {len(group)} | " + " | ".join(cells) + " |")
    commits = sorted({r.data.tags.get("git_commit", "?") for r in runs})
    devices = sorted({r.data.tags.get("device", "?") for r in runs})
    seeds = sorted({r.data.tags.get("seed", "?") for r in runs})
    lines += ["", f"Generated from MLflow experiment `{args.experiment}` "
              f"({len(runs)} finished runs; seeds {', '.join(seeds)}; device "
              f"{', '.join(devices)}; commit {', '.join(commits)})."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
