"""timm-style plugin registries for methods, datasets and metrics.

A plugin module registers a factory under a name with a decorator::

    from benchbio.registry import register_metric

    @register_metric("sbd")
    def sbd() -> Metric:
        '''Symmetric Best Dice (CVPPP).'''
        return SymmetricBestDice()

The first line of the factory's docstring is the one-line description that
``benchbio list`` prints.

A dataset factory declares its options as a dataclass, ``register_dataset(name,
options=Options)``, and is called as ``factory(options, data_dir=...)`` with an instance
made by :func:`benchbio.options.coerce_options` (a factory registered without
``options=`` gets a dataclass derived from its keyword arguments and is called with
them). Like timm's ``register_model`` picks up a module's ``default_cfgs``, registering
a factory picks up its module's ``DOWNLOAD`` (a :class:`benchbio.download.Download`:
archives with checksums, licence text, or instructions where no automatic download is
possible), which ``benchbio data download NAME`` runs; ``download=`` overrides it.

Built-in plugins live in the ``benchbio.methods``, ``benchbio.datasets`` and
``benchbio.metrics`` packages (one module per plugin) and are imported on first use;
third-party packages add theirs through the entry-point groups ``benchbio.methods``,
``benchbio.datasets`` and ``benchbio.metrics``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.metadata
import inspect
import pkgutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UnknownPluginError
from .options import coerce_options

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
    """One registered plugin: its name, factory, one-line description and, where the
    registry takes options, its options dataclass and whether the factory takes an
    instance of it (declared) or its fields as keywords (derived from the signature);
    ``download`` is the one given to ``register``, if any."""

    name: str
    factory: Callable[..., Any]
    description: str
    options: type | None = None
    takes_options: bool = False
    download: Any = None


def _first_line(text: str | None) -> str:
    for line in (text or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


class Registry:
    """Names -> factories for one kind of plugin, filled by a decorator."""

    def __init__(
        self, kind: str, package: str, group: str, passthrough: tuple[str, ...] | None = None
    ) -> None:
        """``passthrough``: for a registry whose plugins take options (datasets), the
        keyword arguments of :meth:`create` that are not options (``data_dir``); None
        for one whose factories take their keywords as they are (methods check their
        own options; metrics)."""
        self.kind = kind
        self.package = package
        self.group = group
        self.passthrough = passthrough
        self._entries: dict[str, Entry] = {}
        self._discovered = False

    def register(
        self, name: str | None = None, *, description: str | None = None,
        options: type | None = None, download: Any = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a factory under ``name`` (default: its function name),
        with its options dataclass and download (default: its module's ``DOWNLOAD``)."""

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
            opts, takes = options, options is not None
            if opts is None and self.passthrough is not None:
                opts = _options_from_signature(key, factory, self.passthrough)
            self._entries[key] = Entry(key, factory, desc, opts, takes, download)
            return factory

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. a plugin a test registered); a clear error if absent."""
        self._discover()
        self._entry(name)
        del self._entries[name]

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

    def _entry(self, name: str) -> Entry:
        self._discover()
        if name not in self._entries:
            available = ", ".join(sorted(self._entries)) or "none"
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}; available {self.kind}s: {available}"
            )
        return self._entries[name]

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered under ``name``; a clear error listing the others if none."""
        return self._entry(name).factory

    def options_type(self, name: str) -> type | None:
        """The options dataclass of ``name`` (None in a registry without options)."""
        return self._entry(name).options

    def resolve(self, name: str, given: dict[str, Any]) -> Any:
        """``given`` coerced into the options dataclass of ``name``, defaults filled in:
        what the plugin is created with, logs to MLflow and a sweep hashes."""
        entry = self._entry(name)
        if entry.options is None:
            raise TypeError(f"{self.kind}s take no declared options")
        return coerce_options(entry.options, given, f"{self.kind} {name!r}")

    def download(self, name: str) -> Any:
        """The download of ``name`` (a :class:`benchbio.download.Download`) or None: the
        one given to ``register``, else the ``DOWNLOAD`` of the factory's module."""
        entry = self._entry(name)
        if entry.download is not None:
            return entry.download
        module = sys.modules.get(getattr(entry.factory, "__module__", ""))
        return getattr(module, "DOWNLOAD", None)

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the factory registered under ``name`` with ``kwargs``; in a registry with
        options, those not in ``passthrough`` are coerced into the options first."""
        entry = self._entry(name)
        if entry.options is None:
            return entry.factory(**kwargs)
        fixed = {k: kwargs.pop(k) for k in self.passthrough or () if k in kwargs}
        options = self.resolve(name, kwargs)
        if entry.takes_options:
            return entry.factory(options, **fixed)
        return entry.factory(**fixed, **dataclasses.asdict(options))


def _options_from_signature(
    name: str, factory: Callable[..., Any], passthrough: tuple[str, ...]
) -> type:
    """An options dataclass of a factory's keyword arguments (those with defaults, but
    ``passthrough``), for a plugin registered without ``options=``."""
    import typing

    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # an annotation that does not resolve: take values as given
        hints = {}
    fields = [
        (p.name, hints.get(p.name, Any), dataclasses.field(default=p.default))
        for p in inspect.signature(factory).parameters.values()
        if p.name not in passthrough and p.default is not p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return dataclasses.make_dataclass(f"{name}-options".replace("-", "_"), fields)


METHODS = Registry("method", "benchbio.methods", "benchbio.methods")
DATASETS = Registry("dataset", "benchbio.datasets", "benchbio.datasets",
                    passthrough=("data_dir",))
METRICS = Registry("metric", "benchbio.metrics", "benchbio.metrics")

register_method = METHODS.register
register_dataset = DATASETS.register
register_metric = METRICS.register
