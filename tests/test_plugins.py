"""Plugins follow the registry: every registered method and dataset declares its options as
a dataclass, checked and typed by the one coercion (CLI, sweep spec and Python alike);
the core names no built-in plugin."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Literal

import pytest
from conftest import tiny_options

import benchbio
from benchbio import DATASETS, METHODS, METRICS
from benchbio.errors import BenchbioError, DataError, UnknownPluginError
from benchbio.options import coerce_options, parse_assignments
from benchbio.sweep import dataset_options

CORE = Path(benchbio.__file__).parent


# ---------------------------------------------------------------------------- core
def test_the_core_names_no_builtin_plugin():
    """No module of benchbio/ holds a registered name as a string literal or imports a
    plugin module, so a plugin is one file in methods/, datasets/ or metrics/."""
    names = set(METHODS.names()) | set(DATASETS.names()) | set(METRICS.names())
    found = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                parts = module.replace(".", " ").split()
                if {"methods", "datasets", "metrics"} & set(parts):
                    found.append(f"{path.name}:{node.lineno} imports {module}")
            if isinstance(node, ast.Import):
                found += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names
                          if {"methods", "datasets", "metrics"} & set(a.name.split("."))]
    assert found == []


# ---------------------------------------------------------------------------- methods
@pytest.mark.parametrize("name", METHODS.names())
def test_method_options_are_its_dataclass(name):
    method = benchbio.create_method(name)
    tiny = tiny_options(method.Options)
    given = {k.replace("_", "-"): str(v) for k, v in tiny.items()}  # as the CLI spells them
    resolved = benchbio.create_method(name, **given).options()
    assert resolved == {**method.options(), **tiny}
    assert set(resolved) == {f.name for f in dataclasses.fields(method.Options)}
    with pytest.raises(BenchbioError, match=f"method '{name}' has no option nosuch; its "
                                            f"options are: .*{sorted(resolved)[0]}"):
        benchbio.create_method(name, nosuch=1)


# ---------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_logs_exactly_its_resolved_options(name, tmp_path):
    """What a run logs (``InstanceDataset.options``) is what a sweep hashes; a dataset
    without data on disk says so in one line."""
    options_type = DATASETS.options_type(name)
    assert dataclasses.is_dataclass(options_type)
    tiny = tiny_options(options_type)
    resolved = dataset_options(name, tiny)
    assert resolved == dataclasses.asdict(DATASETS.resolve(name, tiny))
    assert set(resolved) == {f.name for f in dataclasses.fields(options_type)}
    try:
        dataset = DATASETS.create(name, data_dir=str(tmp_path / "empty"), **tiny)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    assert dataset.options == resolved


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_refuses_unknown_option_before_reading_data(name):
    with pytest.raises(BenchbioError, match=f"dataset '{name}' has no option nosuch"):
        DATASETS.create(name, data_dir="/nonexistent", nosuch=1)


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_download_is_declared_by_its_module(name, tmp_path):
    download = DATASETS.download(name)
    if download is None:
        return
    assert download.licence  # the terms come with the archives
    if not download.archives:  # a manual download: the instructions, one line
        with pytest.raises(BenchbioError) as info:
            download.run(tmp_path)
        assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------- coercion
@dataclasses.dataclass
class _Knobs:
    count: int = 1
    rate: float = 0.5
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    level: Literal[1, 2] = 2
    size: int | None = None
    pair: tuple[float, float] = (0.0, 1.0)
    label: str = "x"


def test_one_coercion_for_cli_spec_and_python():
    cli = parse_assignments(("rate=1", "flag=yes", "mode=b", "level=1", "size=none",
                             "pair=(1, 2)", "label=7x"), "--set")
    spec = {"rate": 1, "flag": True, "mode": "b", "level": 1, "size": None, "pair": [1, 2],
            "label": "7x"}
    python = {"rate": "1", "flag": "true", "mode": "b", "level": "1", "size": None,
              "pair": (1.0, 2.0), "label": "7x"}
    expected = _Knobs(1, 1.0, True, "b", 1, None, (1.0, 2.0), "7x")
    for given in (cli, spec, python):
        assert coerce_options(_Knobs, given, "widget 'w'") == expected
    assert coerce_options(_Knobs, {"count": 3}, "w").count == 3


def test_dash_and_underscore_in_keys_are_one():
    assert parse_assignments(("n-guides=3",), "--set") == {"n_guides": 3}
    assert benchbio.create_method("harmonic", **{"n-guides": 3}).opts.n_guides == 3
    assert dataset_options("synthetic-cells", {"n-train": 3})["n_train"] == 3


@pytest.mark.parametrize("given, message", [
    ({"mode": "c"}, "widget 'w': option mode='c' is not one of: a, b"),
    ({"level": 3}, "option level=3 is not one of: 1, 2"),
    ({"count": 1.5}, "option count=1.5 must be of type int"),
    ({"count": True}, "option count=True must be of type int"),
    ({"flag": "maybe"}, "option flag='maybe' must be of type bool"),
    ({"count": None}, "option count=None must be of type int"),
    ({"pair": [1, 2, 3]}, "option pair=[1, 2, 3] must be of type tuple"),
    ({"colour": 1}, "widget 'w' has no option colour; its options are: count, flag, label"),
])
def test_coercion_errors_are_one_line(given, message):
    with pytest.raises(BenchbioError) as info:
        coerce_options(_Knobs, given, "widget 'w'")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_literal_choices_replace_hand_written_checks():
    with pytest.raises(BenchbioError, match="position='spiral' is not one of: sinconv"):
        benchbio.create_method("harmonic", position="spiral")
    with pytest.raises(BenchbioError, match="n_sigma=3 is not one of: 1, 2"):
        benchbio.create_method("embedseg", n_sigma=3)
    with pytest.raises(BenchbioError, match="sequence='A9' is not one of: A1, A2, A3, A4"):
        DATASETS.resolve("cvppp", {"sequence": "A9"})


# ---------------------------------------------------------------------------- registry
def test_unregister_removes_a_plugin():
    METHODS.register("test-gone")(lambda **kw: benchbio.create_method("harmonic", **kw))
    assert "test-gone" in METHODS
    METHODS.unregister("test-gone")
    assert "test-gone" not in METHODS.names()
    with pytest.raises(UnknownPluginError, match="unknown method 'test-gone'"):
        METHODS.unregister("test-gone")


def test_a_dataset_without_declared_options_gets_them_from_its_signature():
    def plain(data_dir=None, count: int = 2, mode: Literal["a", "b"] = "a"):
        """A third-party factory with keyword options."""
        return {"data_dir": data_dir, "count": count, "mode": mode}

    DATASETS.register("test-plain")(plain)
    try:
        assert DATASETS.create("test-plain", data_dir="d", count="3") == {
            "data_dir": "d", "count": 3, "mode": "a"}
        assert dataset_options("test-plain", {}) == {"count": 2, "mode": "a"}
        with pytest.raises(BenchbioError, match="is not one of: a, b"):
            DATASETS.create("test-plain", mode="c")
    finally:
        DATASETS.unregister("test-plain")
