"""``benchbio ui``: the MLflow UI for the same tracking store that runs log to.

``mlflow ui`` starts a server with worker processes of its own. It runs in a process
group (session) of its own, which ``benchbio ui`` stops as a whole when it ends, however
it ends: Ctrl-C, SIGTERM or SIGHUP (a supervisor, a closed terminal or notebook,
``kill``), or the server exiting. On Linux the server is also sent SIGTERM if
``benchbio ui`` is killed outright (SIGKILL), through the parent-death signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import click

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_SECONDS = 10.0


def _new_session() -> None:
    """In the child before exec: a session of its own, and SIGTERM when the parent dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_group(proc: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to the server's whole process group, SIGKILL to it after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # nothing of the group is left
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; workers of the group may still be exiting
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return


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
    received: list[int] = []

    def on_signal(signum, _frame) -> None:
        received.append(signum)
        raise KeyboardInterrupt  # leave proc.wait() at once

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_new_session)  # noqa: PLW1509
    code = 1
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C, or one of STOP_SIGNALS through on_signal
        if not received:
            received.append(signal.SIGINT)
    finally:
        for sig in STOP_SIGNALS:  # a second signal must not interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        stop_group(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise SystemExit(128 + received[0] if received else code)
