"""The ``benchbio`` command line: one group, one module per command under ``commands/``."""

from __future__ import annotations

import os

import click

from .errors import BenchbioError

# MLflow phones home unless told not to; benchbio never wants that.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class BenchbioGroup(click.Group):
    """A click group that reports user errors as one line and exit code 2: benchbio's own
    errors, and click's usage errors (unknown command or option, bad or missing value),
    which click would otherwise print as usage, hint and error on several lines."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BenchbioError as exc:
            click.echo(f"benchbio: error: {exc}", err=True)
            ctx.exit(getattr(exc, "exit_code", 2))  # 128 + signal for an interrupted run
        except click.UsageError as exc:
            if isinstance(exc, click.exceptions.NoArgsIsHelpError):
                raise  # a bare sub-group shows its help, as asked
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            message = " ".join(exc.format_message().split())
            click.echo(f"benchbio: error: {message} (see `{where} --help`)", err=True)
            ctx.exit(2)


@click.group(cls=BenchbioGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="benchbio")
def main() -> None:
    """Train and compare embedding-based instance segmentation methods on biological
    benchmarks, tracked in MLflow."""


def _add_commands() -> None:
    from .commands import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_add_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
