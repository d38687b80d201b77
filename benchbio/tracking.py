"""MLflow tracking: one run per ``benchbio run``, marked FAILED with the reason on error.

The tracking URI is MLflow's own choice (``MLFLOW_TRACKING_URI``, else MLflow's default
store); benchbio checks it is reachable before any training starts.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import BenchbioError

__all__ = ["check_tracking_store", "tracked_run", "flatten", "git_commit"]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _mlflow():
    import mlflow

    return mlflow


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: nested options as MLflow params."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


def git_commit() -> str:
    """The commit of the benchbio source tree (with ``-dirty``), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_tracking_store() -> str:
    """Fail fast, in one line, when the tracking store cannot be reached; return its URI."""
    mlflow = _mlflow()
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
                pass
        except (urllib.error.URLError, OSError) as exc:
            raise BenchbioError(
                f"cannot reach the MLflow tracking server at {uri} ({exc}); start it, or unset "
                "MLFLOW_TRACKING_URI to use the local store"
            ) from None
    try:
        mlflow.search_experiments(max_results=1)
    except Exception as exc:  # any backend failure is the user's store, not our bug
        raise BenchbioError(
            f"cannot use the MLflow tracking store {uri}: {str(exc).splitlines()[0]}"
        ) from None
    return uri


@contextlib.contextmanager
def tracked_run(experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[Any]:
    """An active MLflow run; an exception marks it FAILED (KILLED on Ctrl-C) with the reason."""
    mlflow = _mlflow()
    mlflow.set_experiment(experiment)
    run = mlflow.start_run(run_name=run_name, tags=tags)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.set_tag("failure_reason", "interrupted by the user")
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        mlflow.set_tag("failure_reason", f"{type(exc).__name__}: {reason}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
