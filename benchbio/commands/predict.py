"""``benchbio predict``: apply a trained model to image files, one label TIFF per input."""

from __future__ import annotations

import click

from ..errors import BenchbioError
from .run import parse_assignments


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--run", "run_id", default=None,
              help="MLflow run whose checkpoint/best.pt to use (store: MLFLOW_TRACKING_URI).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="A best.pt checkpoint file instead of a run.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for <name>.tif label images (uint16, 0 = background).")
@click.option("--tile", type=int, default=512, show_default=True,
              help="Window side in pixels; larger images are predicted in overlapping tiles.")
@click.option("--overlap", type=int, default=128, show_default=True,
              help="Pixels shared by neighbouring tiles (half of it is context on each side).")
@click.option("--batch-size", type=int, default=4, show_default=True,
              help="Tiles per forward pass.")
@click.option("--flip-tta", is_flag=True,
              help="Average with the left-right flipped prediction (methods that allow it).")
@click.option("--overlay", is_flag=True, help="Also write overlays/<name>.png.")
@click.option("--fg", "fg_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of foreground masks <name>.tif/.png, for models whose protocol "
                   "gives one at test time.")
@click.option("--min-area", type=int, default=None,
              help="Drop instances smaller than this (default: the checkpoint's).")
@click.option("--set", "method_sets", multiple=True, metavar="KEY=VALUE",
              help="Override a post-processing option, e.g. --set clusterer=sklearn.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--overwrite", is_flag=True, help="Replace existing files in --out.")
def command(inputs, run_id, checkpoint, out_dir, tile, overlap, batch_size, flip_tta, overlay,
            fg_dir, min_area, method_sets, device, overwrite) -> None:
    """Predict instances in INPUT files or folders (tif/png) with a trained model."""
    from ..inference import collect_inputs, load_checkpoint, load_run, predict_files

    if (run_id is None) == (checkpoint is None):
        raise BenchbioError("give exactly one of --run RUN_ID or --checkpoint FILE")
    if tile < 1 or overlap < 0 or batch_size < 1:
        raise BenchbioError("--tile and --batch-size must be positive and --overlap >= 0")
    if overlap >= tile:
        raise BenchbioError(f"--overlap {overlap} must be smaller than --tile {tile}")
    files = collect_inputs(inputs)
    overrides = parse_assignments(method_sets, "--set")
    predictor = (load_run(run_id, device, overrides) if run_id
                 else load_checkpoint(checkpoint, device, overrides))
    if predictor.fg_at_test and fg_dir is None:
        click.echo("benchbio: note: this model's protocol gives a foreground mask at test "
                   "time; without --fg the method predicts background itself", err=True)

    def report_error(_path, message: str) -> None:
        click.echo(f"benchbio: error: {message}", err=True)

    report = predict_files(
        predictor, files, out_dir, overwrite=overwrite, overlay=overlay, fg_dir=fg_dir,
        on_error=report_error, tile=tile, overlap=overlap, batch_size=batch_size,
        flip=flip_tta, min_area=min_area,
    )
    done = len(files) - len(report.failed)
    t = report.timings
    click.echo(f"{done} label image(s) written to {out_dir} ({predictor.source}; network "
               f"{t.get('network', 0):.1f} s, post-processing {t.get('postprocess', 0):.1f} s)")
    if report.failed:
        names = ", ".join(p.name for p, _ in report.failed)
        raise BenchbioError(
            f"{len(report.failed)} of {len(files)} input(s) failed ({names}); the others "
            "were written; fix those files and predict them again"
        )
