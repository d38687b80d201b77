"""CLI commands, one module each; ``COMMANDS`` is what ``benchbio`` offers."""

from __future__ import annotations

import importlib

import click

_MODULES = ["list", "eval", "data", "run", "ui", "sweep", "report", "predict"]


def _load() -> list[click.Command]:
    commands = []
    for module_name in _MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{module_name}":
                continue  # command not written yet
            raise
        commands.append(module.command)
    return commands


COMMANDS = _load()
