"""``benchbio eval PRED_DIR GT_DIR``: score a folder of predictions against ground truth."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..errors import DataError
from ..evaluation import EvalResult, default_metrics, evaluate
from ..io import list_images, read_labels, read_scores, scores_path
from ..registry import METRICS

LABEL_SUFFIXES = (".tif", ".tiff", ".png")
# keys left out of the per-image table (still in the means table and the JSON)
_DETAIL_KEY = re.compile(r"dsb_accuracy_\d+|avs_\d+|ap_(small|medium|large)")


def parse_metrics(values: tuple[str, ...]) -> list[str]:
    """Metric names from repeated and/or comma-separated ``--metrics`` values."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    names = list(dict.fromkeys(names)) or default_metrics()
    for name in names:
        METRICS.get(name)  # unknown name -> UnknownPluginError listing the metrics
    return names


def label_files(folder: Path) -> dict[str, Path]:
    """Label files (tif, tiff, png) in ``folder`` by name stem; a stem given twice is an error."""
    files: dict[str, Path] = {}
    for path in list_images(folder):
        if path.suffix.lower() not in LABEL_SUFFIXES:
            continue
        if path.stem in files:
            raise DataError(
                f"{files[path.stem].name} and {path.name} in {folder} share the name "
                f"{path.stem!r}; keep one file per image"
            )
        files[path.stem] = path
    return files


def pair_files(pred_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path]]:
    """(stem, prediction file, ground-truth file), matched by stem; unmatched is an error."""
    preds, gts = label_files(pred_dir), label_files(gt_dir)
    for side, mine, other, folder in (
        ("prediction", preds, gts, gt_dir),
        ("ground truth", gts, preds, pred_dir),
    ):
        lonely = sorted(set(mine) - set(other))
        if lonely:
            names = ", ".join(mine[s].name for s in lonely[:5])
            more = f" and {len(lonely) - 5} more" if len(lonely) > 5 else ""
            raise DataError(
                f"{side} file(s) {names}{more} have no partner in {folder}; "
                "give every image a file of the same name stem on both sides"
            )
    if not preds:
        raise DataError(f"no label images (tif, tiff, png) in {pred_dir}")
    return [(stem, preds[stem], gts[stem]) for stem in sorted(preds)]


def _fmt(value: float) -> str:
    return f"{value:.4f}" if value != int(value) else f"{int(value)}"


def print_result(result: EvalResult, console: Console) -> None:
    """A per-image table of the main keys, then the set-level value of every key."""
    keys = list(result.mean)
    main_keys = [k for k in keys if not _DETAIL_KEY.fullmatch(k)]
    table = Table(title="per image")
    table.add_column("image")
    for key in main_keys:
        table.add_column(key, justify="right", min_width=len(key), no_wrap=True)
    for name, row in result.per_image.items():
        table.add_row(name, *(_fmt(row[k]) for k in main_keys))
    needed = sum(max(len(k), 6) + 3 for k in main_keys) + max(map(len, result.per_image)) + 4
    console.print(table, width=max(console.width, needed))  # full headers, even if wide
    means = Table(title=f"set ({len(result.per_image)} images)")
    means.add_column("metric")
    means.add_column("value", justify="right")
    for key in keys:
        means.add_row(key, _fmt(result.mean[key]))
    console.print(means)
    console.print(
        "coco keys (ap*): COCOeval over the whole set, -1 = no true instance in that "
        "area range; other keys: mean over images."
    )


@click.command("eval")
@click.argument("pred_dir", type=click.Path(path_type=Path, file_okay=False))
@click.argument("gt_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--metrics",
    "-m",
    multiple=True,
    help="Metric plugins, comma-separated or repeated (default: every metric but those "
    "whose keys another one also gives).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help='Write {"per_image": {NAME: {key: value}}, "mean": {key: value}} to this file.',
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --json file.")
def command(
    pred_dir: Path, gt_dir: Path, metrics: tuple[str, ...], json_path: Path | None, overwrite: bool
) -> None:
    """Score predicted label images in PRED_DIR against GT_DIR, paired by name stem.

    Files are label images (tif, tiff, png; lowest value = background) or, as multi-page
    tif, stacks of possibly overlapping instance masks. A prediction's instance scores
    (for COCO AP) are read from <stem>.scores.json beside it, as `benchbio predict`
    writes them; without that file each instance scores area / (area + 1).
    """
    names = parse_metrics(metrics)
    if json_path is not None and json_path.exists() and not overwrite:
        raise DataError(f"{json_path} exists; pass --overwrite to replace it or pick another path")
    pairs = pair_files(pred_dir, gt_dir)
    preds, gts, scores = [], [], []
    sidecars = [scores_path(pred_path) for _, pred_path, _ in pairs]
    present = [path.is_file() for path in sidecars]
    if any(present) and not all(present):
        lonely = ", ".join(p.name for p, ok in zip(sidecars, present, strict=True) if not ok)
        raise DataError(
            f"{pred_dir} has scores files for some predictions but not {lonely}; give every "
            "prediction a <stem>.scores.json or none"
        )
    for sidecar, (_, pred_path, gt_path) in zip(sidecars, pairs, strict=True):
        scores.append(read_scores(sidecar) if sidecar.is_file() else None)
        pred, gt = read_labels(pred_path), read_labels(gt_path)
        if pred.shape[-2:] != gt.shape[-2:]:
            raise DataError(
                f"{pred_path} is {pred.shape[-2]}x{pred.shape[-1]} but {gt_path} is "
                f"{gt.shape[-2]}x{gt.shape[-1]}; prediction and ground truth must have the "
                "same size"
            )
        preds.append(pred)
        gts.append(gt)
    result = evaluate(preds, gts, metrics=names, names=[stem for stem, _, _ in pairs],
                      scores=scores)
    print_result(result, Console())
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        click.echo(f"wrote {json_path}")
