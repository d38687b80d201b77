"""Plugin options: one parser for ``key=value`` text and one coercion into a dataclass.

Methods and datasets declare their options as a dataclass (a method's ``Options``, a
dataset's ``options=`` of :func:`benchbio.registry.register_dataset`). Every way of
giving options (``--set``/``--data-opt``/``--opt`` on the command line, a sweep spec's
tables, keyword arguments from Python) goes through :func:`coerce_options`, which

- treats ``-`` and ``_`` in keys alike (``n-guides`` is ``n_guides``),
- refuses unknown keys in one line naming the owner's options,
- converts values to the declared type where that is unambiguous (an int for a float
  field, a list for a tuple, ``"true"``/``"yes"``/``1`` for a bool, text from Python for
  a number), and
- checks ``typing.Literal`` fields against their choices,

then builds the dataclass, whose ``__post_init__`` may normalise or cross-check fields.
``dataclasses.asdict`` of the result is what MLflow logs and what a sweep hashes.
"""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from .errors import BenchbioError

__all__ = [
    "parse_value",
    "parse_assignments",
    "normalize_key",
    "coerce_options",
    "coerce_value",
    "resolved_options",
]

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_value(text: str) -> Any:
    """An option value from command-line text: Python literals (numbers, tuples, quoted
    strings), ``true``/``false``, ``none``/``null``, else the text itself.

    >>> [parse_value(t) for t in ("12", "0.5", "True", "none", "(1, 2)", "sinconv")]
    [12, 0.5, True, None, (1, 2), 'sinconv']
    """
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def normalize_key(key: str) -> str:
    """An option key as its dataclass field is named: ``-`` read as ``_``.

    >>> normalize_key(" n-guides ")
    'n_guides'
    """
    return key.strip().replace("-", "_")


def parse_assignments(pairs: tuple[str, ...] | list[str], what: str) -> dict[str, Any]:
    """``("a=1", "b-c=x")`` -> ``{"a": 1, "b_c": "x"}``; one line for a malformed pair.

    >>> parse_assignments(("n-guides=8", "position=coordconv"), "--set")
    {'n_guides': 8, 'position': 'coordconv'}
    """
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BenchbioError(f"{what} {pair!r} is not of the form key=value")
        out[normalize_key(key)] = parse_value(value)
    return out


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, annotation: Any) -> tuple[bool, Any]:
    """(ok, value converted to ``annotation``); ok False when it cannot be."""
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is typing.Any:
        return True, value
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if isinstance(value, str) and not all(isinstance(c, str) for c in choices):
            value = parse_value(value)
        return (value in choices and type(value) in {type(c) for c in choices}), value
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if value is None:
            return type(None) in members, None
        for member in (m for m in members if m is not type(None)):
            ok, converted = _convert(value, member)
            if ok:
                return True, converted
        return False, value
    if value is None:
        return False, value
    if origin is tuple or annotation is tuple:
        if isinstance(value, str):
            value = parse_value(value)
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(annotation)
        if args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return False, value
            pairs = [_convert(v, a) for v, a in zip(value, args)]
        elif args:
            pairs = [_convert(v, args[0]) for v in value]
        else:
            pairs = [(True, v) for v in value]
        return all(ok for ok, _ in pairs), tuple(v for _, v in pairs)
    if annotation is bool:
        if isinstance(value, bool):
            return True, value
        text = str(value).strip().lower()
        if isinstance(value, (int, str)) and text in _TRUE + _FALSE:
            return True, text in _TRUE
        return False, value
    if annotation in (int, float):
        if isinstance(value, str):
            value = parse_value(value)
        if isinstance(value, bool):
            return False, value
        if annotation is float and isinstance(value, (int, float)):
            return True, float(value)
        return isinstance(value, int), value
    if isinstance(annotation, type):
        return isinstance(value, annotation), value
    return True, value  # an annotation this coercion does not know: taken as given


def coerce_options(options_type: type, given: Mapping[str, Any], owner: str) -> Any:
    """An instance of the dataclass ``options_type`` from ``given`` (keys and values as any
    caller gives them); one-line :class:`BenchbioError` naming ``owner`` (e.g. "method
    'harmonic'") for an unknown key, a value of the wrong type or a choice not offered.
    """
    fields = {f.name: f for f in dataclasses.fields(options_type) if f.init}
    hints = typing.get_type_hints(options_type)
    typed: dict[str, Any] = {}
    for raw_key, value in given.items():
        key = normalize_key(raw_key)
        if key not in fields:
            names = ", ".join(sorted(fields)) or "none"
            raise BenchbioError(f"{owner} has no option {raw_key}; its options are: {names}")
        typed[key] = coerce_value(key, value, hints.get(key, fields[key].type), owner)
    return options_type(**typed)


def coerce_value(key: str, value: Any, annotation: Any, owner: str) -> Any:
    """``value`` converted to the type ``annotation`` (see the module docstring); a
    one-line :class:`BenchbioError` naming ``owner`` and the field when it cannot be.

    >>> coerce_value("eps", 1, float, "method 'harmonic'")
    1.0
    """
    ok, converted = _convert(value, annotation)
    if ok:
        return converted
    if typing.get_origin(annotation) is typing.Literal:
        choices = ", ".join(map(str, typing.get_args(annotation)))
        raise BenchbioError(f"{owner}: option {key}={value!r} is not one of: {choices}")
    raise BenchbioError(
        f"{owner}: option {key}={value!r} must be of type {_type_name(annotation)}")


def resolved_options(options: Any) -> dict[str, Any]:
    """The options as logged to MLflow and hashed by a sweep: the dataclass as a dict."""
    return dataclasses.asdict(options)
