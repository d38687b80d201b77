"""Every registered method learns: trained on one image, it scores that image well.

The methods come from the registry, so a method added later is checked without editing
this file; each declares its own settings (``Method.overfit``). Methods whose check is
not ``in_suite`` (variants that share a suite method's code path) run in
``benchmarks/overfit.py``, whose table is ``results/bench/overfit.md``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from benchbio.datasets.synthetic import OVERFIT_CHECK
from benchbio.evaluation import metric_producing
from benchbio.method import Method, OverfitCheck
from benchbio.overfit import check_of, methods_to_check, overfit
from benchbio.registry import DATASETS, METHODS, Entry


@pytest.mark.parametrize("name", methods_to_check(OVERFIT_CHECK))
def test_every_method_declares_a_check_that_can_run(name):
    check = check_of(name, OVERFIT_CHECK)
    assert isinstance(check, OverfitCheck)
    assert check.dataset in DATASETS
    assert metric_producing(check.metric) is not None
    assert check.steps >= check.eval_every >= 1 and 0 < check.threshold <= 1
    METHODS.create(name, **check.options)  # its options are the method's own


@pytest.mark.slow
@pytest.mark.parametrize("name", methods_to_check(OVERFIT_CHECK, in_suite=True))
def test_method_overfits_one_image(name):
    result = overfit(name, check_of(name, OVERFIT_CHECK))
    curve = ", ".join(f"{step}: {score:.3f}" for step, score, _ in result.history)
    assert result.passed, (
        f"{name} reached {result.check.metric} {result.best:.3f} < {result.check.threshold} "
        f"in {result.steps} steps ({curve})")


class _Blind(Method):
    """A method whose network cannot see its targets: it must fail the check."""

    name = "blind-test-method"
    overfit = replace(OVERFIT_CHECK, steps=4, eval_every=2)

    def build_model(self, in_channels):
        model = torch.nn.Conv2d(in_channels, 1, 1)
        model.divisor = 1
        return model

    def targets(self, instances, fg):
        return {"zero": np.zeros(np.shape(instances)[-2:], np.float32)}

    def loss(self, output, targets):
        return (output[:, 0] - targets["zero"]).pow(2).mean()

    def postprocess(self, output, fg, min_area):
        return np.zeros(output.shape[-2:], np.int64)


@pytest.fixture
def blind_method(monkeypatch):
    monkeypatch.setitem(METHODS._entries, _Blind.name, Entry(_Blind.name, _Blind, "blind"))
    return _Blind.name


def test_a_new_method_is_checked_and_a_method_that_cannot_learn_fails(blind_method):
    assert blind_method in methods_to_check(OVERFIT_CHECK, in_suite=True)
    result = overfit(blind_method, check_of(blind_method, OVERFIT_CHECK))
    assert not result.passed
    assert result.steps == 4 and [h[0] for h in result.history] == [2, 4]
    assert result.score == 0.0 and result.seconds >= result.train_seconds > 0


def test_a_method_without_its_own_check_gets_the_standard_one(monkeypatch):
    class Plain(_Blind):
        name = "plain-test-method"
        overfit = None

    monkeypatch.setitem(METHODS._entries, Plain.name, Entry(Plain.name, Plain, "plain"))
    assert check_of(Plain.name, OVERFIT_CHECK) is OVERFIT_CHECK
    assert Plain.name in methods_to_check(OVERFIT_CHECK, in_suite=True)
