"""The examples in the docstrings of small pure helpers run as tests (`python -m pytest`)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["benchbio.options", "benchbio.instances", "benchbio.io", "benchbio.datasets._common",
           "benchbio.metrics.sbd"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
