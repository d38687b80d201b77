"""``benchbio report``: a study's (or experiment's) table and figure from its MLflow runs."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BenchbioError


def _latest_per_cell(runs: list) -> list:
    """One run per config hash (the newest finished one, else the newest; runs come newest
    first); untagged runs kept."""
    seen, out = set(), []
    runs = sorted(runs, key=lambda r: r.info.status != "FINISHED")  # stable: newest first
    for run in runs:
        key = run.data.tags.get("config_hash") or run.info.run_id
        if key not in seen:
            seen.add(key)
            out.append(run)
    return out


def _runs(experiment: str | None, study: str | None, must_exist: bool = True,
          unfinished: bool = False) -> list:
    import mlflow

    if experiment:
        if mlflow.get_experiment_by_name(experiment) is None:
            if not must_exist:
                return []
            raise BenchbioError(f"no MLflow experiment {experiment!r} in "
                                f"{mlflow.get_tracking_uri()}; check MLFLOW_TRACKING_URI")
        names = [experiment]
    else:
        names = [e.name for e in mlflow.search_experiments()]
    if not names:
        return []
    filters = [] if unfinished else ["attributes.status = 'FINISHED'"]
    if study:
        filters.append(f"tags.study = '{study}'")
    return mlflow.search_runs(experiment_names=names, filter_string=" and ".join(filters),
                              output_format="list", order_by=["attributes.start_time DESC"])


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every logged value of a run's metric."""
    import mlflow

    return [(m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key)]


@click.command("report")
@click.argument("spec", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--study", default=None, help="Runs tagged with this study (without a SPEC).")
@click.option("--experiment", default=None, help="Runs of this MLflow experiment.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Folder for the outputs [default: the SPEC's folder].")
@click.option("--metrics", default=None,
              help="Comma-separated metric keys as columns [default: the spec's, else all].")
@click.option("--title", default=None, help="Table title [default: the study or experiment].")
@click.option("--overwrite", is_flag=True, help="Replace an existing report in the folder.")
@click.option("--time-axis", type=click.Choice(["wall", "cpu"]), default="wall",
              show_default=True,
              help="Clock of curves.png: wall-clock seconds, or the training process's CPU "
                   "seconds (fair on a shared machine for runs on one torch thread).")
@click.option("--unfinished", is_flag=True,
              help="Also draw the validation curves of runs that have not finished "
                   "(running, stopped, failed), dashed; the table keeps finished runs only.")
def command(spec, study, experiment, out_dir, metrics, title, overwrite, time_axis,
            unfinished) -> None:
    """Write table.md, table.csv, table.tex and figure.png (and curves.png, curves.csv:
    validation score against time, when the runs logged val_seconds) for a study's runs.

    Methods are rows, metrics columns, mean +- std over seeds, the best per column
    marked, with the spec's reference figures beside them. With SPEC, only runs of the
    spec's current cells count (same config hash); the newest finished run per cell.
    """
    from ..report import build_table, write_report
    from ..sweep import load_spec, plan_cells
    from ..tracking import check_tracking_store

    if spec is None and not (study or experiment):
        raise BenchbioError("give a study SPEC.toml, or --study NAME or --experiment NAME "
                            "with --out DIR")
    if spec is not None and study:
        raise BenchbioError("--study is taken from the SPEC; give one or the other")
    keys = [k.strip() for k in metrics.split(",") if k.strip()] if metrics else None
    uri = check_tracking_store()
    if spec is not None:
        study_spec = load_spec(spec)
        cells = plan_cells(study_spec)
        wanted = {c.config_hash for c in cells}
        runs = [r for r in _latest_per_cell(_runs(experiment or study_spec.experiment,
                                                  study_spec.name, must_exist=False,
                                                  unfinished=unfinished))
                if r.data.tags.get("config_hash") in wanted]
        have = {r.data.tags.get("config_hash") for r in runs if r.info.status == "FINISHED"}
        table = build_table(
            runs, title=title or study_spec.name, metrics=keys or study_spec.metrics or None,
            references=study_spec.references, reference_source=study_spec.reference_source,
            methods=study_spec.methods, datasets=study_spec.datasets,
            missing=[c.name for c in cells if c.config_hash not in have],
            source=f"study `{study_spec.name}`, experiment `{study_spec.experiment}`, {uri}",
            description=study_spec.description,
            reproduce=f"benchbio sweep {spec} && benchbio report {spec} --overwrite",
            history=_history, time_axis=time_axis, unfinished=unfinished,
        )
        out_dir = out_dir or study_spec.path.parent
    else:
        if out_dir is None:
            raise BenchbioError("--out DIR is needed without a SPEC (a spec's report goes "
                                "beside it)")
        runs = _latest_per_cell(_runs(experiment, study, unfinished=unfinished))
        what = " and ".join(x for x in (f"study `{study}`" if study else "",
                                        f"experiment `{experiment}`" if experiment else "") if x)
        table = build_table(runs, title=title or study or experiment, metrics=keys,
                            source=f"{what}, {uri}", history=_history, time_axis=time_axis,
                            unfinished=unfinished)
    for path in write_report(table, out_dir, overwrite=overwrite):
        click.echo(f"wrote {path}")
