"""Progress that a log file can show: one plain line per step when stdout is no terminal.

In a terminal, tqdm's bars show progress. Output sent to a file (``nohup``, SLURM, ``>
log``) gets no bar (tqdm turns itself off there), so :class:`ProgressLines` prints one
plain, flushed line per epoch, cell or image instead: the step, its figures, the time
elapsed and an estimate of the time remaining.
"""

from __future__ import annotations

import sys
import time
from typing import IO

__all__ = ["ProgressLines", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``3725.2`` -> ``1:02:05`` (hours:minutes:seconds)."""
    whole = int(round(max(0.0, seconds)))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class ProgressLines:
    """``what done/total: figures; elapsed H:MM:SS, remaining ~H:MM:SS`` per step.

    ``done`` steps were finished before (a resumed run); the estimate of the remaining
    time uses the pace of the steps finished since this object was made. Prints only
    when ``stream`` (default stdout) is not a terminal, unless ``enabled`` says otherwise.
    """

    def __init__(
        self, what: str, total: int, done: int = 0, *, stream: IO[str] | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.what, self.total, self.done, self._first = what, total, done, done
        self.stream = stream or sys.stdout
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.enabled = (not isatty()) if enabled is None else enabled
        self.start = time.monotonic()

    def step(self, label: str = "", figures: dict[str, float] | None = None) -> None:
        """Count one step done and print its line (``label``: e.g. a file name)."""
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        pace = elapsed / max(1, self.done - self._first)
        text = ", ".join(f"{key} {value:.4g}" for key, value in (figures or {}).items())
        parts = [f"{self.what} {self.done}/{self.total}", label, text]
        head = ": ".join(p for p in parts[:1] + [" ".join(p for p in parts[1:] if p)] if p)
        print(f"{head}; elapsed {format_seconds(elapsed)}, remaining "
              f"~{format_seconds(pace * max(0, self.total - self.done))}",
              file=self.stream, flush=True)
