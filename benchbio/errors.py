"""User-facing errors.

Every problem a user can fix (a wrong name, a missing folder, a malformed file) is raised
as a :class:`BenchbioError` whose message is one line naming what is wrong and what to
do. The CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations


class BenchbioError(Exception):
    """An error caused by the user's input, reported as one line and exit code 2."""


class UnknownPluginError(BenchbioError, KeyError):
    """A method, dataset or metric name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(BenchbioError):
    """Missing, malformed or inconsistent data on disk."""
