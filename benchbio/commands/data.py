"""``benchbio data``: download datasets, and look at what a dataset plugin reads."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from ..data import data_root
from ..errors import BenchbioError
from ..instances import count_instances
from ..options import parse_assignments
from ..registry import DATASETS


def load_dataset(name: str, data_dir: str | None, opts: tuple[str, ...]):
    """Create a dataset by name with ``--opt key=value`` options (coerced and checked by
    the registry: an unknown option is a one-line error naming the dataset's options)."""
    return DATASETS.create(name, data_dir=data_dir, **parse_assignments(opts, "--opt"))


@click.group("data")
def command() -> None:
    """Download datasets and check that they are read right."""


@command.command("download")
@click.argument("name")
@click.option("--data-dir", default=None, help="Data root (default: $BENCHBIO_DATA, else "
              "a per-user cache).")
@click.option("--no-verify", is_flag=True, help="Accept archives without a published "
              "checksum (their computed sha256 is printed).")
@click.option("--keep-archives", is_flag=True, help="Keep the downloaded archives.")
def download(name: str, data_dir: str | None, no_verify: bool, keep_archives: bool) -> None:
    """Download and unpack dataset NAME into the data root."""
    download = DATASETS.download(name)  # an unknown name gets the registry's error
    if download is None:
        raise BenchbioError(f"dataset {name!r} has no download; put its files under "
                            f"{data_root(data_dir)} (see docs/datasets.md)")
    root = download.run(data_root(data_dir), no_verify=no_verify,
                        keep_archives=keep_archives, echo=click.echo)
    click.echo(f"{name}: ready in {root}")


def _stats(samples) -> dict:
    counts, sizes = [], {}
    for sample in samples:
        counts.append(count_instances(sample.instances))
        size = "x".join(map(str, sample.image.shape[1:]))
        sizes[size] = sizes.get(size, 0) + 1
    return {"counts": counts, "sizes": sizes}


@command.command("info")
@click.argument("name")
@click.option("--data-dir", default=None, help="Data root or the dataset's own folder.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Dataset option.")
def info(name: str, data_dir: str | None, opts: tuple[str, ...]) -> None:
    """Counts per split: images, instances per image, image sizes."""
    ds = load_dataset(name, data_dir, opts)
    click.echo(f"{ds.name}: {ds.description}")
    click.echo(f"  options: {ds.options}")
    click.echo(f"  protocol: metrics={','.join(ds.metrics)} val_metric={ds.val_metric} "
               f"fg_at_test={ds.fg_at_test} min_area={ds.min_area} eval_tile={ds.eval_tile} "
               f"in_channels={ds.in_channels}")
    total = 0
    for split, samples in ds.splits.items():
        if len(samples) == 0:
            click.echo(f"  {split}: 0 images")
            continue
        stats = _stats(samples)
        c = np.array(stats["counts"])
        total += int(c.sum())
        sizes = ", ".join(f"{k} ({v})" for k, v in sorted(stats["sizes"].items()))
        click.echo(f"  {split}: {len(samples)} images, {int(c.sum())} instances, per image "
                   f"min {c.min()} / mean {c.mean():.1f} / max {c.max()}; sizes {sizes}")
    click.echo(f"  total instances: {total}")


@command.command("show")
@click.argument("name")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--split", default="test", show_default=True)
@click.option("--n", "n", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--data-dir", default=None, help="Data root or the dataset's own folder.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Dataset option.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def show(name: str, out: str, split: str, n: int, data_dir: str | None,
         opts: tuple[str, ...], overwrite: bool) -> None:
    """Draw images of a split with their instances overlaid, as a PNG montage."""
    from ..visualize import overlay_instances, save_montage, to_rgb

    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise BenchbioError(f"{out_path} exists; pass --overwrite to replace it")
    ds = load_dataset(name, data_dir, opts)
    samples = ds.split(split)
    picked = [samples[i] for i in range(min(n, len(samples)))]
    images = [to_rgb(s.image) for s in picked]
    overlays = [overlay_instances(s.image, s.instances) for s in picked]
    titles = [f"{s.name} ({count_instances(s.instances)})" for s in picked]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_montage([images, overlays], out_path, titles=titles, row_labels=["image", "instances"])
    click.echo(f"wrote {out_path} ({len(picked)} {split} images of {ds.name})")
