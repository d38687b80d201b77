"""The overfit check: can a method's network learn one image?

Every method declares how it is checked (:class:`benchbio.method.OverfitCheck`, the class
attribute ``overfit``): a tiny network, a learning rate, a step budget, one generated
image and a score to reach on it. :func:`overfit` trains the method's own network on that
image with the method's own hooks (``fit``, ``build_model``, ``targets``,
``device_targets``, ``loss``, through the training loop's step) and
scores it with the harness's prediction and evaluation path (``training.predict_samples``,
``training.evaluate_samples``), so a method whose targets, loss or post-processing cannot
express the truth fails here, in seconds to minutes, before anyone spends GPU hours on
it. ``tests/test_overfit.py`` runs it for every registered method (those whose check is
``in_suite``); ``benchmarks/overfit.py`` runs it for all of them and writes the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .acceleration import forward_loss, resolve_acceleration
from .method import Method, OverfitCheck
from .registry import DATASETS, METHODS
from .state import make_scheduler

__all__ = ["OverfitResult", "CheckImage", "check_image", "overfit", "check_of",
           "methods_to_check"]


@dataclass
class OverfitResult:
    """What one overfit check measured.

    Attributes:
        method: the registered method name.
        check: the settings it ran with.
        passed: the score reached ``check.threshold`` within ``check.steps`` and
            ``check.cpu_seconds``.
        steps: training steps taken (the first evaluation that passed, else all).
        score: the last score; ``best`` the highest seen.
        cpu_seconds: CPU seconds of the whole check (fit, training, evaluations) on one
            torch thread, ``time.process_time()``; ``train_cpu_seconds`` of the training
            steps alone. ``seconds``: wall-clock seconds of the whole check (they grow
            with the machine's load; the CPU seconds hardly do).
        history: ``(step, score, CPU seconds so far, wall seconds so far)`` at every
            evaluation.
        method_state: the fitted method instance and ``model`` the network as trained
            (the last step), to post-process its output otherwise when diagnosing a
            failed check (``benchmarks/overfit_diagnose.py``).
    """

    method: str
    check: OverfitCheck
    passed: bool
    steps: int
    score: float
    best: float
    cpu_seconds: float
    train_cpu_seconds: float
    seconds: float
    history: list[tuple[int, float, float, float]] = field(default_factory=list)
    method_state: Method | None = field(default=None, repr=False)
    model: torch.nn.Module | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CheckImage:
    """The one image a check trains and scores on: ``sample`` (image 0 of the check's
    dataset's train split), ``fg`` (its foreground mask where the dataset's protocol gives
    it at test, else None), ``min_area`` (the method's, else the dataset's) and
    ``dataset``."""

    dataset: Any
    sample: Any
    fg: np.ndarray | None
    min_area: int


def check_image(check: OverfitCheck, method: Method) -> CheckImage:
    """The check's image, as :func:`overfit` trains on it and scores it (also what the
    ceiling and diagnosis scripts in ``benchmarks/`` post-process)."""
    dataset = DATASETS.create(check.dataset, **{"n_train": 1, "n_val": 1, "n_test": 1,
                                                **check.dataset_options})
    sample = dataset.split("train")[0]
    min_area = method.opts.min_area if method.opts.min_area is not None else dataset.min_area
    return CheckImage(dataset, sample, sample.fg if dataset.fg_at_test else None, min_area)


def check_of(name: str, default: OverfitCheck) -> OverfitCheck:
    """The overfit settings a registered method declares, else ``default`` (the
    standard check, ``benchbio.datasets.synthetic.OVERFIT_CHECK``, in the suite)."""
    return type(METHODS.create(name)).overfit or default


def methods_to_check(default: OverfitCheck, in_suite: bool | None = None) -> list[str]:
    """Registered method names, optionally only those whose check (their own, else
    ``default``) is (or is not) in the test suite: a method registered later is picked
    up without naming it anywhere."""
    return [n for n in METHODS.names()
            if in_suite is None or check_of(n, default).in_suite == in_suite]


def overfit(name: str, check: OverfitCheck, *, seed: int = 0, steps: int | None = None,
            on_eval: Callable[[int, float, float, float], None] | None = None
            ) -> OverfitResult:
    """Train method ``name`` on one image and score it there until it passes.

    ``check``: the settings (usually :func:`check_of`); ``steps`` overrides its step
    budget; ``on_eval(step, score, cpu_seconds, seconds)`` is called after every
    evaluation. Training uses the whole image (no crop, no augmentation), batch 1, Adam
    under the check's learning-rate schedule over the step budget;
    the image is image 0 of the check's dataset's train split. The check runs on one
    torch thread (restored afterwards) and stops at the first evaluation that reaches the
    threshold, after ``steps``, or at the first evaluation past ``check.cpu_seconds``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _overfit(name, check, seed, int(steps if steps is not None else check.steps),
                        on_eval)
    finally:
        torch.set_num_threads(threads)


def _overfit(name: str, check: OverfitCheck, seed: int, budget: int,
             on_eval: Callable[[int, float, float, float], None] | None) -> OverfitResult:
    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    np.random.seed(seed)
    method: Method = METHODS.create(name, **check.options)
    where = check_image(check, method)
    dataset, sample, fg, min_area = where.dataset, where.sample, where.fg, where.min_area
    method.fit([sample], seed=seed)
    device = torch.device("cpu")
    model = method.build_model(dataset.in_channels)
    image = torch.from_numpy(np.ascontiguousarray(sample.image))[None]
    batch = {"image": image, **{k: torch.from_numpy(np.ascontiguousarray(v))[None]
                                for k, v in method.targets(np.asarray(sample.instances),
                                                           fg).items()}}
    accel = resolve_acceleration(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=check.lr)
    scheduler = make_scheduler(optimizer, check.lr_schedule, budget)
    history: list[tuple[int, float, float, float]] = []
    train_cpu = 0.0
    score, best, step, cpu = float("nan"), -float("inf"), 0, 0.0
    from .training import evaluate_samples, predict_samples

    while step < budget and cpu <= check.cpu_seconds:
        tick = time.process_time()
        model.train()
        for _ in range(min(check.eval_every, budget - step)):
            optimizer.zero_grad(set_to_none=True)
            loss = forward_loss(method, model, batch, accel)  # the training loop's step
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
        train_cpu += time.process_time() - tick
        preds = predict_samples(method, model, [sample], device,
                                fg_at_test=dataset.fg_at_test, min_area=min_area)
        scored = evaluate_samples(preds, [sample], [_metric_plugin(check.metric)])
        score = float(scored.mean[check.metric])
        best = max(best, score)
        cpu = time.process_time() - cpu_start
        history.append((step, score, cpu, time.perf_counter() - start))
        if on_eval is not None:
            on_eval(*history[-1])
        if score >= check.threshold:
            break
    passed = score >= check.threshold and cpu <= check.cpu_seconds
    return OverfitResult(name, check, passed, step, score, best, cpu, train_cpu,
                         time.perf_counter() - start, history, method, model)


def _metric_plugin(key: str) -> str:
    from .training import _metric_of

    return _metric_of(key)
