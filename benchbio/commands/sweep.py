"""``benchbio sweep SPEC.toml``: run a study's grid of cells, resumably, locally or on SLURM."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from ..errors import BenchbioError
from .run import parse_assignments


def _local_gpus(requested: int | None) -> int:
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested is None:
        return available
    if requested > available:
        raise BenchbioError(f"--gpus {requested} asked for, but this machine has {available} "
                            "CUDA device(s); use --gpus 0 for CPU cells")
    return requested


def _preflight_datasets(cells) -> None:
    """Create each distinct dataset once, so that missing data fails before any job."""
    from ..registry import DATASETS

    seen = set()
    for cell in cells:
        c = cell.config
        key = (c.dataset, repr(sorted(c.dataset_options.items())), c.data_dir)
        if key in seen:
            continue
        seen.add(key)
        dataset = DATASETS.create(c.dataset, data_dir=c.data_dir, **c.dataset_options)
        for split in ("train", "val", "test"):
            dataset.split(split)


@click.command("sweep")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local",
              show_default=True, help="Run cells on this machine or submit them to SLURM.")
@click.option("--jobs", "-j", type=int, default=1, show_default=True,
              help="local, CPU host: cells run at once (torch threads are shared out).")
@click.option("--gpus", type=int, default=None,
              help="local: GPUs to use, one cell per GPU [default: all visible].")
@click.option("--partition", default=None, help="slurm: partition.")
@click.option("--gpus-per-job", type=int, default=1, show_default=True,
              help="slurm: GPUs a cell gets.")
@click.option("--time", "time_min", type=int, default=24 * 60, show_default=True,
              help="Time limit of one cell in minutes (slurm requeues a cell that hits it).")
@click.option("--mem", "mem_gb", type=float, default=None, help="slurm: memory per cell in GB.")
@click.option("--cpus-per-job", type=int, default=None, help="slurm: CPUs per cell.")
@click.option("--array-parallelism", type=int, default=64, show_default=True,
              help="slurm: cells of the job array running at once.")
@click.option("--slurm-opt", multiple=True, metavar="KEY=VALUE",
              help="slurm: extra #SBATCH option, e.g. --slurm-opt account=lab (repeatable).")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Job logs [default: the benchbio cache, sweeps/STUDY]; shared disk for slurm.")
@click.option("--dry-run", is_flag=True, help="List the cells and what would run; run nothing.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the cells to end (--no-wait: submit and return, for slurm).")
def command(spec, executor, jobs, gpus, partition, gpus_per_job, time_min, mem_gb, cpus_per_job,
            array_parallelism, slurm_opt, log_dir, dry_run, wait) -> None:
    """Run every cell (method x dataset x seed) of the study in SPEC that has not finished.

    A cell is skipped when a FINISHED MLflow run of the study carries its config hash;
    failed and missing cells are run. Each cell is one `benchbio run`, tagged with the
    study and the hash. Exit status 1 when a cell failed.
    """
    import mlflow
    from rich.console import Console
    from rich.table import Table

    from ..data import cache_dir
    from ..progress import format_seconds
    from ..sweep import (
        ExecutorOptions,
        absolute_tracking_uri,
        check_shared_store,
        existing_runs,
        load_spec,
        pending_cells,
        plan_cells,
        resumable_run,
        run_cells,
    )
    from ..tracking import check_tracking_store

    if jobs < 1:
        raise BenchbioError("--jobs must be at least 1")
    study = load_spec(spec)
    cells = plan_cells(study)
    uri = mlflow.get_tracking_uri()
    if executor == "slurm":
        check_shared_store(uri)  # as given: a relative path is what it refuses
        if not dry_run and shutil.which("sbatch") is None:
            raise BenchbioError("--executor slurm needs SLURM's sbatch, which is not on PATH; "
                                "run the sweep on the cluster's login node")
    else:
        check_tracking_store()
        if not wait:
            raise BenchbioError("--no-wait is for --executor slurm; local cells end with "
                                "this command")
    uri = absolute_tracking_uri(uri)  # what the jobs log to, wherever they start
    todo, done = pending_cells(cells, study.experiment)
    console = Console()
    console.print(f"study [bold]{study.name}[/bold]: {len(cells)} cells, {len(done)} finished "
                  f"(skipped), {len(todo)} to run; MLflow {uri}, experiment "
                  f"{study.experiment!r}")
    if dry_run:
        last = {}
        for run in existing_runs(study.experiment, study.name):
            last.setdefault(run.data.tags.get("config_hash"), run.info.status)
        table = Table(title=f"{study.name} (dry run)")
        for col in ("cell", "config hash", "last run", "action"):
            table.add_column(col)
        for cell in cells:
            action = "skip" if cell in done else (
                "resume" if resumable_run(cell, requeued=False) else "run")
            table.add_row(cell.name, cell.config_hash, last.get(cell.config_hash, "-"), action)
        console.print(table)
        return
    if not todo:
        console.print("nothing to run")
        return
    _preflight_datasets(todo)
    mlflow.set_experiment(study.experiment)  # created once here, not by racing jobs
    options = ExecutorOptions(
        kind=executor, jobs=jobs, gpus=_local_gpus(gpus) if executor == "local" else 0,
        partition=partition, gpus_per_job=gpus_per_job, time_min=time_min, mem_gb=mem_gb,
        cpus_per_job=cpus_per_job, array_parallelism=array_parallelism,
        slurm_extra={k: str(v) for k, v in parse_assignments(slurm_opt, "--slurm-opt").items()},
        log_dir=log_dir or cache_dir() / "sweeps" / study.name,
    )
    if executor == "local":
        at_once = f"{options.gpus} at a time, one per GPU" if options.gpus else \
            f"{min(jobs, len(todo))} at a time on CPU"
    else:
        at_once = f"SLURM array, {array_parallelism} at a time"
    console.print(f"running {len(todo)} cells ({at_once}); job logs in {options.log_dir}")

    began, ended = time.monotonic(), []

    def show_start(cell) -> None:
        click.echo(f"  {'started':9s} {cell.name}  ({format_seconds(time.monotonic() - began)}"
                   " elapsed)")

    def show(outcome) -> None:  # one line per cell, also in a log file (no bar here)
        ended.append(outcome)
        figures = ", ".join(f"{k} {v:.3f}" for k, v in list(outcome.test.items())[:3])
        click.echo(f"  {outcome.status:9s} {outcome.cell.name}  "
                   f"{figures or outcome.reason or outcome.job_id}  ({len(ended)}/{len(todo)}"
                   f" ended, {format_seconds(time.monotonic() - began)} elapsed)")

    outcomes = run_cells(todo, options, uri, wait=wait, on_outcome=show, on_start=show_start)
    table = Table(title=f"{study.name}: this sweep")
    for col in ("cell", "status", "MLflow run", "seconds", "detail"):
        table.add_column(col)
    for o in outcomes:
        detail = o.reason or ", ".join(f"{k} {v:.3f}" for k, v in list(o.test.items())[:3])
        table.add_row(o.cell.name, o.status, o.run_id or o.job_id or "-",
                      f"{o.seconds:.0f}" if o.seconds else "-", detail)
    for cell in done:
        table.add_row(cell.name, "skipped", "-", "-", "finished before with the same config")
    console.print(table)
    failed = [o for o in outcomes if o.status == "FAILED"]
    if failed:
        click.echo(f"benchbio: {len(failed)} of {len(outcomes)} cells failed (reasons above, "
                   "runs marked FAILED in MLflow); re-run the sweep to retry them", err=True)
        raise SystemExit(1)
    if wait:
        console.print(f"done; write the table with `benchbio report {spec}`")
