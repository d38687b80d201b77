"""Plugin registries: registration, listing, creation, unknown names, entry points."""

from __future__ import annotations

import importlib.metadata

import pytest
from click.testing import CliRunner

import benchbio
from benchbio.cli import main
from benchbio.errors import UnknownPluginError
from benchbio.registry import Registry


def test_builtin_plugins_are_listed():
    assert "harmonic" in benchbio.list_methods()
    assert "synthetic-cells" in benchbio.list_datasets()
    assert {"sbd", "coco", "dsb_accuracy"} <= set(benchbio.list_metrics())


def test_register_create_and_describe():
    reg = Registry("widget", "benchbio.metrics", "benchbio.test-none")

    @reg.register("spin")
    def spin(speed: int = 1):
        """Spins a widget.

        More text that is not the description.
        """
        return ("spin", speed)

    assert reg.create("spin", speed=3) == ("spin", 3)
    assert reg.descriptions()["spin"] == "Spins a widget."
    assert "spin" in reg.names("sp*")
    assert reg.names("zz*") == []


def test_unknown_name_lists_available():
    with pytest.raises(UnknownPluginError) as info:
        benchbio.create_method("no-such-method")
    message = str(info.value)
    assert "unknown method 'no-such-method'" in message and "harmonic" in message


def test_duplicate_registration_is_refused():
    reg = Registry("widget", "benchbio.metrics", "benchbio.test-none")
    def first():
        return 1

    def second():
        return 2

    reg.register("a")(first)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(second)


def test_entry_point_plugins_are_loaded(monkeypatch):
    reg = Registry("widget", "benchbio.metrics", "benchbio.widgets")
    ep = importlib.metadata.EntryPoint(
        name="third-party", value=f"{__name__}:_third_party", group="benchbio.widgets"
    )

    def fake_entry_points(group=None):
        return [ep] if group == "benchbio.widgets" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    assert reg.create("third-party") == "made by a third party"


def _third_party():
    """A plugin from another package."""
    return "made by a third party"


def test_list_command_prints_names_and_descriptions():
    result = CliRunner().invoke(main, ["list", "methods"])
    assert result.exit_code == 0
    line = next(x for x in result.output.splitlines() if x.strip().startswith("harmonic "))
    assert "SinConv" in line


def test_unknown_plugin_on_cli_is_one_line_exit_2():
    result = CliRunner().invoke(main, ["run", "-m", "nope", "-d", "synthetic-cells"])
    assert result.exit_code == 2
    assert "unknown method 'nope'" in result.output
    assert "Traceback" not in result.output
