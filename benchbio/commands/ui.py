"""``benchbio ui``: the MLflow UI for the same tracking store that runs log to."""

from __future__ import annotations

import os
import subprocess
import sys

import click


@click.command("ui")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def command(port: int, host: str) -> None:
    """Open the MLflow UI on localhost for benchbio's tracking store."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        click.echo(f"runs are on the tracking server {uri}: open it in a browser")
        return
    click.echo(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C to stop)")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port)]
    raise SystemExit(subprocess.call(cmd, env=env))
