"""Re-score a finished run's best checkpoint with changed post-processing options.

Clustering options (mean-shift bandwidth, seed thresholds, ...) do not change the
network, so their effect can be measured on the same weights without training again:

    python benchmarks/rescore.py RUN_ID --split test --set eps=0.7 --set eps=0.5
    python benchmarks/rescore.py mlruns/1/RUN_ID/artifacts/checkpoint/best.pt --set ...

Each ``--set key=value`` is one variant (repeat ``--set`` for several; join options of
one variant with commas: ``--set bandwidth=1.0,min_area=20``); the run's own options are
scored first. Prints SBD, DiC, |DiC| and FgBgDice per variant as a markdown table. A run
id is read through ``MLFLOW_TRACKING_URI``; a ``best.pt`` path through the run's
``config.json`` two folders up (its artifacts). One torch thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchbio.inference import load_checkpoint, load_run, predict_image
from benchbio.options import parse_assignments
from benchbio.registry import DATASETS
from benchbio.training import evaluate_samples

METRICS = ("sbd", "dic", "fg_bg_dice")  # metric plugins
KEYS = ("sbd", "dic", "abs_dic", "fg_bg_dice")  # the figures they give


def rescore(run: str, overrides: dict, samples) -> dict[str, float]:
    """Mean metrics of a run's best checkpoint (run id or path) on ``samples`` with
    ``overrides``."""
    if Path(run).is_file():
        predictor = load_checkpoint(run, device="cpu", method_overrides=overrides)
    else:
        predictor = load_run(run, device="cpu", method_overrides=overrides)
    preds = [predict_image(predictor, s.image, s.fg if predictor.fg_at_test else None,
                           tile=None) for s in samples]
    result = evaluate_samples(preds, samples, list(METRICS))
    return {k: float(result.mean[k]) for k in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="MLflow run id, or the path of a run's best.pt")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--set", action="append", default=[], dest="variants",
                        help="key=value[,key=value] method options of one variant")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if Path(args.run).is_file():
        config = json.loads((Path(args.run).parents[1] / "config.json").read_text())
        name, dataset_options = config["dataset"], dict(config["dataset_options"])
    else:
        import mlflow

        run = mlflow.get_run(args.run)
        name, dataset_options = run.data.tags["dataset"], parse_assignments(tuple(
            f"{k.split('.', 1)[1]}={v}" for k, v in run.data.params.items()
            if k.startswith("dataset_options.")), "option")
    dataset_options.pop("data_dir", None)
    dataset = DATASETS.create(name, **dataset_options)
    samples = list(dataset.split(args.split))
    print(f"| options | {' | '.join(KEYS)} | CPU s |")
    print(f"|---|{'---:|' * (len(KEYS) + 1)}")
    for variant in ["", *args.variants]:
        overrides = parse_assignments(tuple(v for v in variant.split(",") if v), "option")
        start = time.process_time()
        scores = rescore(args.run, overrides, samples)
        cells = " | ".join(f"{scores[k]:.3f}" for k in KEYS)
        print(f"| {variant or '(run)'} | {cells} | {time.process_time() - start:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
