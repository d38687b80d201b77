"""Per-run checkpoints that let an interrupted run continue exactly where it stopped.

Every tracked run owns one checkpoint folder, found again from the run id alone through
the run's ``checkpoint_dir`` tag:

- ``--checkpoint-dir DIR`` (or ``$BENCHBIO_CHECKPOINT_DIR``): ``DIR/<run_id>/``;
- else, when the run's artifacts are on a local disk (MLflow's default ``./mlruns``),
  ``<run folder>/checkpoints/`` beside the run's ``artifacts/`` folder;
- else (a remote artifact store): ``<user data dir>/benchbio/checkpoints/<run_id>/``.

The folder holds ``run.json`` (the run's configuration, written before training),
``last.pt`` (the whole training state, rewritten after every epoch and when a stop is
requested), ``best-epochNNNN.pt`` (the best validation weights so far; both files are
deleted once the run has FINISHED and logged them as ``checkpoint/best.pt``) and
``lock`` (held while a process trains the run, so that a run still alive is never
resumed twice). Files are written to a temporary name, synced and renamed, so a crash at any
moment leaves the previous complete file in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import platformdirs
import torch

from .errors import BenchbioError

__all__ = [
    "CHECKPOINT_TAG",
    "LAST",
    "RUN_CONFIG",
    "RunInterrupted",
    "GracefulStop",
    "checkpoint_folder",
    "local_path",
    "check_writable",
    "save_atomic",
    "write_json_atomic",
    "read_checkpoint",
    "rng_state",
    "set_rng_state",
    "run_lock",
    "is_locked",
]

CHECKPOINT_TAG = "checkpoint_dir"
LAST = "last.pt"
RUN_CONFIG = "run.json"
LOCK = "lock"
ENV_DIR = "BENCHBIO_CHECKPOINT_DIR"


class RunInterrupted(BenchbioError):
    """A run stopped on a signal after saving its checkpoint; exit code 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


# ---------------------------------------------------------------------------- where
def local_path(uri: str) -> Path | None:
    """The local folder of a ``file:`` URI or plain path; None for a remote URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def checkpoint_folder(run_id: str, artifact_uri: str, root: str | os.PathLike | None) -> Path:
    """Where the checkpoints of run ``run_id`` go (see the module docstring)."""
    root = root or os.environ.get(ENV_DIR)
    if root:
        return Path(root).expanduser().resolve() / run_id
    artifacts = local_path(artifact_uri)
    if artifacts is not None:
        return artifacts.resolve().parent / "checkpoints"
    return Path(platformdirs.user_data_dir("benchbio")) / "checkpoints" / run_id


def check_writable(folder: Path, what: str, fix: str) -> None:
    """Create ``folder`` and a file in it, or raise a one-line error naming ``fix``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".benchbio-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BenchbioError(f"cannot write to the {what} {folder} ({reason}); {fix}") from None


# ---------------------------------------------------------------------------- files
def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows it
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def save_atomic(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, rename over ``path``."""
    _write_atomic(path, lambda fh: torch.save(payload, fh))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """JSON, written like :func:`save_atomic`."""
    text = json.dumps(data, indent=2, default=str).encode()
    _write_atomic(path, lambda fh: fh.write(text))


def read_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The dict a checkpoint written by :func:`save_atomic` holds, with a clear error if
    unreadable (:func:`benchbio.inference.load_checkpoint` rebuilds a model from one)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise BenchbioError(
            f"cannot read the checkpoint {path} ({str(exc).splitlines()[0]}); "
            "delete it to restart the run from its previous checkpoint"
        ) from None


# ---------------------------------------------------------------------------- random state
def rng_state() -> dict[str, Any]:
    """The states of Python's, numpy's and torch's global generators."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- lock
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, resume is trusted
    fcntl = None


@contextlib.contextmanager
def run_lock(folder: Path, run_id: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/lock`` while a process trains the run.

    The operating system drops the lock when the process dies, even on SIGKILL, so a
    held lock means the run is alive somewhere and must not be resumed again.
    """
    if fcntl is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BenchbioError(
                f"run {run_id} is still being trained by another process (its checkpoint "
                f"folder {folder} is locked); wait for it or stop that process first"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_locked(folder: Path) -> bool:
    """True when a live process holds the run's lock (see :func:`run_lock`)."""
    if fcntl is None or not (folder / LOCK).exists():
        return False
    with open(folder / LOCK, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


# ---------------------------------------------------------------------------- signals
class GracefulStop:
    """SIGINT, SIGTERM and SIGUSR2 become a request to stop at the next safe point.

    The training loop polls :attr:`signum` between batches, saves its checkpoint and
    raises :class:`RunInterrupted`. A second signal stops at once (KeyboardInterrupt).
    :meth:`chain` then hands the signal to the handler that was installed before
    (submitit's, which requeues a pre-empted SLURM job), if any. A signal the process
    was started to ignore (``nohup``, a background job's SIGINT) stays ignored. Outside
    the main thread signals cannot be caught and this does nothing.
    """

    SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR2")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self._restore()
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def chain(self) -> None:
        """Call the handler that was installed before ours for the caught signal."""
        previous = self._previous.get(self.signum) if self.signum else None
        self._restore()
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.signum, None)
