"""MLflow tracking: one run per ``benchbio run``, marked FAILED with the reason on error.

The tracking URI is MLflow's own choice (``MLFLOW_TRACKING_URI``, else MLflow's default
store); benchbio checks it is reachable before any training starts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .errors import BenchbioError

__all__ = [
    "check_tracking_store",
    "check_store_writable",
    "tracked_run",
    "retrying",
    "find_run",
    "logged_steps",
    "flatten",
    "git_commit",
    "run_tags",
    "log_run_start",
    "metric_logger",
    "log_run_outputs",
]

#: Run statuses that ``--resume`` accepts: the run did not end normally.
UNFINISHED = ("RUNNING", "KILLED", "FAILED")

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
        with _first_use_lock(uri):
            retrying(mlflow.search_experiments)(max_results=1)
    except Exception as exc:  # any backend failure is the user's store, not our bug
        raise BenchbioError(
            f"cannot use the MLflow tracking store {uri}: {str(exc).splitlines()[0]}"
        ) from None
    return uri


@contextlib.contextmanager
def _first_use_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a SQLite store across processes: MLflow creates and
    migrates the tables on first use, and sweep workers that all find a fresh file
    race on it ("Online migration expected to match one row"). The lock is an ``flock``
    on the database file itself, which SQLite's own (POSIX) locks do not see."""
    path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if path is None or fcntl is None or not path.parent.is_dir():
        yield
        return
    with open(path, "ab") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


T = TypeVar("T")

#: Transient store errors worth another try: SQLite's writer lock under concurrent
#: workers, a server that is restarting or overloaded, and two workers creating the
#: same experiment at once (the retry finds the one the other created).
_TRANSIENT = ("database is locked", "database table is locked", "temporarily unavailable",
              "error code 502", "error code 503", "error code 504", "Connection refused",
              "Connection reset", "RESOURCE_ALREADY_EXISTS", "UNIQUE constraint failed")
RETRY_ATTEMPTS = 8


def _is_transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in _TRANSIENT)


def retrying(fn: Callable[..., T], attempts: int = RETRY_ATTEMPTS) -> Callable[..., T]:
    """``fn`` retried with jittered exponential backoff (0.1 s doubling, up to 8 tries,
    about 25 s in all) while it fails with a transient store error; other errors and the
    last failure propagate. Many sweep workers share one SQLite file, whose single
    writer lock can outlast SQLite's own busy timeout."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> T:
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == attempts - 1 or not _is_transient(exc):
                    raise
                time.sleep(min(0.1 * 2**attempt, 8.0) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    return call


def check_store_writable(experiment: str) -> Any:
    """Create (or find) ``experiment`` and write a tag on it, so that a read-only store
    fails before training; check its artifact folder too when it is local. Returns the
    experiment."""
    from .checkpoint import check_writable, local_path

    mlflow = _mlflow()
    uri = mlflow.get_tracking_uri()
    try:
        exp = retrying(mlflow.set_experiment)(experiment)
        retrying(mlflow.MlflowClient().set_experiment_tag)(
            exp.experiment_id, "benchbio.last_write_check", time.strftime("%Y-%m-%dT%H:%M:%S")
        )
    except Exception as exc:
        raise BenchbioError(
            f"cannot write to the MLflow tracking store {uri}: {str(exc).splitlines()[0]}; "
            "check its permissions or point MLFLOW_TRACKING_URI at a writable store"
        ) from None
    artifacts = local_path(exp.artifact_location)
    if artifacts is not None:
        check_writable(artifacts, f"artifact folder of experiment {experiment!r}",
                       "run from a folder you can write to, or set MLFLOW_TRACKING_URI / "
                       "the experiment's artifact location elsewhere")
    return exp


@contextlib.contextmanager
def tracked_run(
    experiment: str, run_name: str, tags: dict[str, str], run_id: str | None = None
) -> Iterator[Any]:
    """An active MLflow run (the existing run ``run_id`` when resuming); an exception
    marks it FAILED, a signal or Ctrl-C KILLED, with the reason in ``failure_reason``."""
    from .checkpoint import RunInterrupted

    mlflow = _mlflow()
    if run_id is None:
        # The id is passed on: when two workers create the experiment at once, MLflow's
        # set_experiment returns it without making it active, and start_run would
        # silently file the run under "Default" (seen with 4 workers on a server).
        exp = retrying(mlflow.set_experiment)(experiment)
        run = retrying(mlflow.start_run)(experiment_id=exp.experiment_id, run_name=run_name,
                                         tags=tags)
    else:
        run = retrying(mlflow.start_run)(run_id=run_id)
        retrying(mlflow.set_tags)(tags)
    try:
        yield run
    except (KeyboardInterrupt, RunInterrupted) as exc:
        reason = str(exc) if isinstance(exc, RunInterrupted) else "interrupted by the user"
        _end(mlflow, "KILLED", reason)
        raise
    except BaseException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _end(mlflow, "FAILED", f"{type(exc).__name__}: {reason}")
        raise
    else:
        with contextlib.suppress(Exception):  # absent after a first, clean attempt
            mlflow.delete_tag("failure_reason")
        retrying(mlflow.end_run)(status="FINISHED")


def _end(mlflow: Any, status: str, reason: str) -> None:
    """End the active run with ``status`` and the reason; never masks the original error."""
    try:
        retrying(mlflow.set_tag)("failure_reason", reason[:5000])
    finally:
        retrying(mlflow.end_run)(status=status)


def find_run(which: str, experiment: str | None = None) -> Any:
    """The run to resume: ``which`` is a run id, or ``last`` for the most recent benchbio
    run (in ``experiment`` if given) that did not finish and is not alive elsewhere."""
    from .checkpoint import CHECKPOINT_TAG, is_locked

    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    uri = mlflow.get_tracking_uri()
    if which != "last":
        try:
            run = client.get_run(which)
        except Exception:
            raise BenchbioError(
                f"no run {which!r} in the tracking store {uri}; give a run id from "
                "`benchbio ui` (or MLFLOW_TRACKING_URI of the store it is in), or --resume last"
            ) from None
        if CHECKPOINT_TAG not in run.data.tags:
            raise BenchbioError(f"run {which} has no checkpoint folder (it was not started by "
                                "this version of `benchbio run`); it cannot be resumed")
        if run.info.status == "FINISHED":
            raise BenchbioError(f"run {which} already finished; start a new run instead")
        return run
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise BenchbioError(f"no experiment {experiment!r} in the tracking store {uri}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    runs = _unfinished_runs(client, ids)
    for run in runs:
        folder = run.data.tags.get(CHECKPOINT_TAG)
        if folder and not is_locked(Path(folder)):
            return run
    raise BenchbioError(
        f"no unfinished benchbio run to resume in the tracking store {uri}"
        + (f" (experiment {experiment!r})" if experiment else "")
        + "; start one with `benchbio run`"
    )


def _unfinished_runs(client: Any, experiment_ids: list[str]) -> list[Any]:
    """RUNNING, KILLED and FAILED runs, newest first."""
    runs = []
    for status in UNFINISHED:
        runs += client.search_runs(experiment_ids, filter_string=f"attributes.status = '{status}'",
                                   max_results=1000)
    return sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)


def logged_steps(run_id: str) -> set[tuple[str, int]]:
    """``(key, step)`` of every metric value the run already has (to log no duplicate)."""
    client = _mlflow().MlflowClient()
    run = client.get_run(run_id)
    return {(key, m.step) for key in run.data.metrics
            for m in client.get_metric_history(run_id, key)}


# ---------------------------------------------------------------------------- one run's records
def run_tags(base: dict[str, str], extra: dict[str, str] | None, prior: Any = None
             ) -> dict[str, str]:
    """The tags a run is started or resumed with.

    A new run gets ``base`` (method, dataset, seed, device), ``git_commit`` and ``extra``
    (e.g. a sweep's study and config hash). A resumption of the run ``prior`` keeps the
    original tags and adds ``extra``, the count ``resumes``, the commit and device it
    continues on (``resumed_git_commit``, ``resumed_device``) and the failure it recovers
    from (``previous_failure_reason``).
    """
    commit = git_commit()
    if prior is None:
        return {**base, "git_commit": commit, **(extra or {})}
    tags = {**(extra or {}), "resumes": str(int(prior.data.tags.get("resumes", "0")) + 1),
            "resumed_git_commit": commit, "resumed_device": base["device"]}
    if "failure_reason" in prior.data.tags:
        tags["previous_failure_reason"] = prior.data.tags["failure_reason"][:5000]
    return tags


def log_run_start(checkpoints: Path, resolved: dict[str, Any], workdir: Path) -> None:
    """What a new active run records before training: the ``checkpoint_dir`` tag, every
    resolved option as params and ``config.json`` (written into ``workdir``)."""
    from .checkpoint import CHECKPOINT_TAG

    mlflow = _mlflow()
    retrying(mlflow.set_tag)(CHECKPOINT_TAG, str(checkpoints))
    retrying(mlflow.log_params)(flatten(resolved))
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
    retrying(mlflow.log_artifact)(str(workdir / "config.json"))


def metric_logger(run_id: str, resumed: bool) -> Callable[[str, float, int], None]:
    """``log(key, value, step)`` into the active run, each (key, step) once: a resumed
    run skips the values it already has (the loop replays its figures on resume)."""
    done = logged_steps(run_id) if resumed else set()
    log_one = retrying(_mlflow().log_metric)

    def log_metric(key: str, value: float, step: int) -> None:
        if (key, step) not in done:
            log_one(key, value, step=step)
            done.add((key, step))

    return log_metric


def log_run_outputs(
    workdir: Path, log_metric: Callable[[str, float, int], None], *, best_epoch: int,
    seconds: float, per_image: dict[str, dict[str, float]], method_files: list[Path],
) -> None:
    """What a finished training adds to the active run: the metrics ``best_epoch`` and
    ``run_seconds``; the artifacts ``checkpoint/best.pt`` and ``test_overlay.png`` (from
    ``workdir``), the method's files under ``method/`` and ``test_per_image.json``."""
    log_metric("best_epoch", best_epoch, 0)
    log_metric("run_seconds", seconds, 0)
    log_artifact = retrying(_mlflow().log_artifact)
    log_artifact(str(workdir / "best.pt"), "checkpoint")
    for path in method_files:
        log_artifact(str(path), "method")
    if (workdir / "test_overlay.png").exists():
        log_artifact(str(workdir / "test_overlay.png"))
    (workdir / "test_per_image.json").write_text(json.dumps(per_image, indent=2))
    log_artifact(str(workdir / "test_per_image.json"))
