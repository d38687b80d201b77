"""Every registered method learns: trained on one image, it scores that image well.

The methods come from the registry, so a method added later is checked without editing
this file; each declares its own settings (``Method.overfit``). Methods whose check is
not ``in_suite`` (variants that share a suite method's code path, or methods that declare
why they cannot pass) run in ``benchmarks/overfit.py``, whose table is
``results/bench/overfit.md``.
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
from benchbio.state import LR_SCHEDULES


@pytest.mark.parametrize("name", methods_to_check(OVERFIT_CHECK))
def test_every_method_declares_a_check_that_can_run(name):
    check = check_of(name, OVERFIT_CHECK)
    assert isinstance(check, OverfitCheck)
    assert check.dataset in DATASETS
    assert metric_producing(check.metric) is not None
    assert check.steps >= check.eval_every >= 1 and 0 < check.threshold <= 1
    assert check.lr_schedule in LR_SCHEDULES and 0 < check.cpu_seconds <= 120
    METHODS.create(name, **check.options)  # its options are the method's own


def _suite_methods_classes() -> dict[type, str]:
    return {type(METHODS.create(n)): n for n in methods_to_check(OVERFIT_CHECK, in_suite=True)}


@pytest.mark.parametrize("name", methods_to_check(OVERFIT_CHECK, in_suite=False))
def test_every_method_out_of_the_suite_says_why(name):
    """No silent skip: a check out of the suite either declares why the method cannot
    pass, or belongs to a variant of a method whose own check runs in the suite (the
    same hooks, other option defaults)."""
    check = check_of(name, OVERFIT_CHECK)
    if check.cannot_pass:
        assert len(check.cannot_pass) > 20, "say why, in words"
        return
    bases = set(type(METHODS.create(name)).__mro__[1:]) & set(_suite_methods_classes())
    assert bases, (f"{name}'s overfit check is out of the test suite without a reason: "
                   "put it in the suite, or declare cannot_pass")


def test_a_check_that_cannot_pass_is_never_in_the_suite():
    with pytest.raises(ValueError, match="in_suite=False"):
        replace(OVERFIT_CHECK, cannot_pass="it cannot, by design")
    assert replace(OVERFIT_CHECK, cannot_pass="it cannot", in_suite=False).cannot_pass


@pytest.mark.slow
@pytest.mark.parametrize("name", methods_to_check(OVERFIT_CHECK, in_suite=True))
def test_method_overfits_one_image(name):
    result = overfit(name, check_of(name, OVERFIT_CHECK))
    curve = ", ".join(f"{step}: {score:.3f} ({cpu:.0f} CPU s)"
                      for step, score, cpu, _ in result.history)
    assert result.passed, (
        f"{name} reached {result.check.metric} {result.best:.3f} (threshold "
        f"{result.check.threshold}) in {result.steps} steps, {result.cpu_seconds:.0f} CPU "
        f"seconds (budget {result.check.cpu_seconds:g}): {curve}")


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
    assert result.score == 0.0 and result.cpu_seconds >= result.train_cpu_seconds > 0
    assert result.seconds > 0 and [h[2] for h in result.history] == sorted(
        h[2] for h in result.history)
    # the trained method and network come back, for diagnosing a failed check
    assert isinstance(result.method_state, _Blind)
    assert isinstance(result.model, torch.nn.Conv2d)


def test_the_check_runs_on_one_thread_and_stops_at_its_cpu_budget(blind_method):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    check = replace(check_of(blind_method, OVERFIT_CHECK), steps=100, cpu_seconds=1e-9)
    result = overfit(blind_method, check,
                     on_eval=lambda *a: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == 2  # one thread, then restored
    torch.set_num_threads(threads)
    assert result.steps == 2 and not result.passed and result.cpu_seconds > 1e-9


def test_a_method_without_its_own_check_gets_the_standard_one(monkeypatch):
    class Plain(_Blind):
        name = "plain-test-method"
        overfit = None

    monkeypatch.setitem(METHODS._entries, Plain.name, Entry(Plain.name, Plain, "plain"))
    assert check_of(Plain.name, OVERFIT_CHECK) is OVERFIT_CHECK
    assert Plain.name in methods_to_check(OVERFIT_CHECK, in_suite=True)


def test_a_variant_changes_its_base_check_and_is_out_of_the_suite(monkeypatch):
    from benchbio.method import register_variant

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    register_variant("blind-variant", _Blind, "a variant", overfit={
        "lr": 1e-4, "cannot_pass": "its network never sees its targets"})
    check = check_of("blind-variant", OVERFIT_CHECK)
    assert check.lr == 1e-4 and check.steps == _Blind.overfit.steps and not check.in_suite
    assert check.cannot_pass == "its network never sees its targets"
    assert "blind-variant" in methods_to_check(OVERFIT_CHECK, in_suite=False)
