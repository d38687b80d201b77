"""timm-style plugin registries for methods, datasets and metrics.

A plugin module registers a factory under a name with a decorator::

    from benchbio.registry import register_metric

    @register_metric("sbd")
    def sbd() -> Metric:
        '''Symmetric Best Dice (CVPPP).'''
        return SymmetricBestDice()

The first line of the factory's docstring is the one-line description that
``benchbio list`` prints. Built-in plugins live in the ``benchbio.methods``,
``benchbio.datasets`` and ``benchbio.metrics`` packages (one module per plugin) and are
imported on first use; third-party packages add theirs through the entry-point groups
``benchbio.methods``, ``benchbio.datasets`` and ``benchbio.metrics``.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import pkgutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UnknownPluginError

__all__ = [
    "Registry",
    "METHODS",
    "DATASETS",
    "METRICS",
    "register_method",
    "register_dataset",
    "register_metric",
]


@dataclass(frozen=True)
class Entry:
    """One registered plugin: its name, factory and one-line description."""

    name: str
    factory: Callable[..., Any]
    description: str


def _first_line(text: str | None) -> str:
    for line in (text or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


class Registry:
    """Names -> factories for one kind of plugin, filled by a decorator."""

    def __init__(self, kind: str, package: str, group: str) -> None:
        self.kind = kind
        self.package = package
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._discovered = False

    def register(
        self, name: str | None = None, *, description: str | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a factory under ``name`` (default: its function name)."""

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            key = name or factory.__name__.replace("_", "-")
            desc = description or _first_line(factory.__doc__)
            old = self._entries.get(key)
            if old is not None and old.factory is not factory:
                same_origin = getattr(old.factory, "__qualname__", None) == getattr(
                    factory, "__qualname__", None
                ) and getattr(old.factory, "__module__", None) == getattr(
                    factory, "__module__", None
                )
                if not same_origin:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = Entry(key, factory, desc)
            return factory

        return decorator

    def _discover(self) -> None:
        """Import the built-in plugin modules and the entry points, once."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")
        for ep in importlib.metadata.entry_points(group=self.group):
            try:
                loaded = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break the rest
                warnings.warn(f"could not load {self.kind} plugin {ep.name!r}: {exc}", stacklevel=2)
                continue
            if callable(loaded) and ep.name not in self._entries:
                self.register(ep.name)(loaded)

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by a shell-style pattern."""
        self._discover()
        names = sorted(self._entries)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def descriptions(self) -> dict[str, str]:
        """Name -> one-line description, sorted by name."""
        self._discover()
        return {n: self._entries[n].description for n in sorted(self._entries)}

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered under ``name``; a clear error listing the others if none."""
        self._discover()
        if name not in self._entries:
            available = ", ".join(sorted(self._entries)) or "none"
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}; available {self.kind}s: {available}"
            )
        return self._entries[name].factory

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the factory registered under ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)


METHODS = Registry("method", "benchbio.methods", "benchbio.methods")
DATASETS = Registry("dataset", "benchbio.datasets", "benchbio.datasets")
METRICS = Registry("metric", "benchbio.metrics", "benchbio.metrics")

register_method = METHODS.register
register_dataset = DATASETS.register
register_metric = METRICS.register
