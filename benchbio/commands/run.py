"""``benchbio run``: train a method on a dataset and score it, as one MLflow run."""

from __future__ import annotations

import dataclasses
import logging

import click

from ..acceleration import AMP_MODES, SWITCH_MODES
from ..errors import BenchbioError
from ..options import parse_assignments
from ..state import LR_SCHEDULES
from ..training import RunConfig

#: RunConfig's defaults are the command's: one place says what a run does by default.
_DEFAULT = {f.name: f.default for f in dataclasses.fields(RunConfig)
            if f.default is not dataclasses.MISSING}


#: CLI parameter -> RunConfig field, for the options a resumed run may be given again.
_FIELDS = {"method": "method", "dataset": "dataset", "epochs": "epochs",
           "batch_size": "batch_size", "lr": "lr", "lr_schedule": "lr_schedule",
           "crop_size": "crop_size", "seed": "seed", "device": "device", "data_dir": "data_dir",
           "experiment": "experiment", "val_every": "val_every", "workers": "workers",
           "amp": "amp", "channels_last": "channels_last", "compile": "compile"}


@click.command("run")
@click.option("--method", "-m", default=None,
              help="Method plugin (see `benchbio list methods`); required unless --resume.")
@click.option("--dataset", "-d", default=None,
              help="Dataset plugin (`benchbio list datasets`); required unless --resume.")
@click.option("--epochs", type=int, default=_DEFAULT["epochs"], show_default=True)
@click.option("--batch-size", type=int, default=_DEFAULT["batch_size"], show_default=True)
@click.option("--lr", type=float, default=_DEFAULT["lr"], show_default=True,
              help="Adam learning rate.")
@click.option("--lr-schedule", default=_DEFAULT["lr_schedule"], show_default=True,
              type=click.Choice(list(LR_SCHEDULES)),
              help="Learning rate over the run, stepped every batch.")
@click.option("--crop-size", type=int, default=_DEFAULT["crop_size"], show_default=True,
              help="Training crop (rounded up to the network's divisor).")
@click.option("--seed", type=int, default=_DEFAULT["seed"], show_default=True)
@click.option("--device", default=_DEFAULT["device"], show_default=True,
              help="auto, cpu or cuda.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Data root (default: $BENCHBIO_DATA, else a per-user cache).")
@click.option("--experiment", default=None, help="MLflow experiment (default: the dataset).")
@click.option("--val-every", type=int, default=_DEFAULT["val_every"], show_default=True,
              help="Validate every N epochs (always after the last).")
@click.option("--workers", type=int, default=_DEFAULT["workers"], show_default=True,
              help="Data loader workers (kept alive for the whole run).")
@click.option("--amp", default=_DEFAULT["amp"], show_default=True,
              type=click.Choice(list(AMP_MODES)),
              help="Mixed precision: auto = bf16 on a GPU that has it, else fp16 with a "
                   "gradient scaler; off on the CPU.")
@click.option("--channels-last", default=_DEFAULT["channels_last"], show_default=True,
              type=click.Choice(list(SWITCH_MODES)),
              help="Channels-last memory format (auto: on a GPU).")
@click.option("--compile/--no-compile", "compile", default=_DEFAULT["compile"],
              show_default=True, help="torch.compile the network's training forward pass.")
@click.option("--set", "method_sets", multiple=True, metavar="KEY=VALUE",
              help="Method option, e.g. --set n_guides=12 (repeatable).")
@click.option("--data-opt", "data_sets", multiple=True, metavar="KEY=VALUE",
              help="Dataset option, e.g. --data-opt sequence=A2 (repeatable).")
@click.option("--resume", metavar="RUN_ID|last", default=None,
              help="Continue an interrupted run from its last checkpoint, in the same MLflow "
                   "run (`last`: the newest unfinished one). Options default to the run's.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None,
              envvar="BENCHBIO_CHECKPOINT_DIR", show_envvar=True,
              help="Keep checkpoints in DIR/<run id>/ (default: beside the run's local "
                   "artifacts, else a per-user data folder).")
@click.option("--no-track", is_flag=True, help="Do not log to MLflow.")
@click.pass_context
def command(ctx, method, dataset, epochs, batch_size, lr, lr_schedule, crop_size, seed, device,
            data_dir, experiment, val_every, workers, amp, channels_last, compile, method_sets,
            data_sets, resume, checkpoint_dir, no_track) -> None:
    """Train METHOD on DATASET, keep the best validation checkpoint, score the test split.

    A checkpoint is saved after every epoch; SIGINT/SIGTERM save one at the next batch
    and end the run KILLED (exit 130/143); `--resume RUN_ID` continues it.
    """
    from rich.console import Console
    from rich.table import Table

    from ..training import resume_config, run

    # MLflow's INFO chatter ("Creating a new experiment") would bury benchbio's own lines.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    given = {name for name in _FIELDS
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    if resume:
        config, resume = resume_config(resume, experiment)
        for name in given:
            setattr(config, _FIELDS[name], ctx.params[name])
        if method_sets:
            config.method_options = {**config.method_options,
                                     **parse_assignments(method_sets, "--set")}
        if data_sets:
            config.dataset_options = {**config.dataset_options,
                                      **parse_assignments(data_sets, "--data-opt")}
    else:
        if not method or not dataset:
            raise BenchbioError("--method and --dataset are required (or --resume RUN_ID to "
                                "continue a run); see `benchbio list`")
        config = RunConfig(
            method=method, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr,
            lr_schedule=lr_schedule, crop_size=crop_size, seed=seed, device=device,
            data_dir=data_dir, experiment=experiment, val_every=val_every, workers=workers,
            amp=amp, channels_last=channels_last, compile=compile,
            method_options=parse_assignments(method_sets, "--set"),
            dataset_options=parse_assignments(data_sets, "--data-opt"),
        )
    result = run(config, track=not no_track, resume=resume, checkpoint_dir=checkpoint_dir)
    table = Table(title=f"{config.method} on {config.dataset} "
                        f"(test split, best epoch {result.best_epoch})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.test.items():
        table.add_row(key, f"{value:.4f}")
    console = Console()
    console.print(table)
    if result.run_id:
        console.print(f"MLflow run {result.run_id} ({result.seconds:.0f} s); "
                      "open it with `benchbio ui`")
