"""``benchbio list``: the registered methods, datasets and metrics."""

from __future__ import annotations

import click

from ..registry import DATASETS, METHODS, METRICS

_REGISTRIES = {"methods": METHODS, "datasets": DATASETS, "metrics": METRICS}


@click.command("list")
@click.argument("kind", required=False, type=click.Choice(sorted(_REGISTRIES)))
def command(kind: str | None) -> None:
    """List plugins (all kinds, or just methods, datasets or metrics)."""
    kinds = [kind] if kind else ["methods", "datasets", "metrics"]
    for k in kinds:
        descriptions = _REGISTRIES[k].descriptions()
        click.echo(f"{k}:")
        width = max((len(n) for n in descriptions), default=0)
        for name, desc in descriptions.items():
            click.echo(f"  {name.ljust(width)}  {desc}")
        if not descriptions:
            click.echo("  (none)")
