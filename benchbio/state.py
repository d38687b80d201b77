"""The training state: everything one batch hands on to the next, saved and restored whole.

:class:`TrainState` holds the model, the optimiser, the learning-rate schedule, the
gradient scaler, the random generators (the batch-order generator and Python's, numpy's
and torch's global ones), the method's fitted state and the :class:`Progress` (where the
loop stands, the best validation so far). Its :meth:`~TrainState.state_dict` is what
``last.pt`` holds and :meth:`~TrainState.load_state_dict` is how ``--resume`` continues
from it, so a new piece of state is added here, once, and is both saved and restored.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LRScheduler,
    OneCycleLR,
)

from .acceleration import Acceleration, resolve_acceleration
from .checkpoint import rng_state, set_rng_state
from .errors import BenchbioError
from .method import Method

__all__ = ["LR_SCHEDULES", "check_lr_schedule", "make_scheduler", "Progress", "TrainState"]

#: The learning-rate schedules, stepped after every batch, by name: ``constant`` (the
#: paper's Adam), ``cosine`` (annealed to 0 over the run), ``onecycle`` (warm-up to
#: ``--lr`` over 30% of the steps, then annealed). ``benchbio run --lr-schedule`` offers
#: exactly these.
LR_SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], LRScheduler]] = {
    "constant": lambda opt, steps: ConstantLR(opt, factor=1.0, total_iters=0),
    "cosine": lambda opt, steps: CosineAnnealingLR(opt, T_max=steps),
    "onecycle": lambda opt, steps: OneCycleLR(
        opt, max_lr=opt.param_groups[0]["lr"], total_steps=steps
    ),
}


def check_lr_schedule(schedule: str) -> None:
    """One-line error for a schedule name that :data:`LR_SCHEDULES` does not have."""
    if schedule not in LR_SCHEDULES:
        raise BenchbioError(
            f"unknown --lr-schedule {schedule!r}; use {', '.join(LR_SCHEDULES)}"
        )


def make_scheduler(
    opt: torch.optim.Optimizer, schedule: str, total_steps: int
) -> LRScheduler:
    """The schedule ``schedule`` of :data:`LR_SCHEDULES` over ``total_steps`` batches."""
    check_lr_schedule(schedule)
    return LR_SCHEDULES[schedule](opt, max(1, total_steps))


@dataclass
class Progress:
    """Where training stands: the next (epoch, batch) to run and what is known so far."""

    epoch: int = 0
    batch: int = 0
    order: list[int] | None = None  # this epoch's shuffled indices once drawn
    losses: list[float] = field(default_factory=list)  # this epoch's batch losses
    best_val: float = -math.inf
    best_epoch: int = -1
    best_file: str | None = None
    metrics: list[tuple[str, float, int]] = field(default_factory=list)  # all logged
    elapsed: float = 0.0  # seconds spent by earlier attempts
    cpu_elapsed: float = 0.0  # CPU seconds of the training process in earlier attempts

    def next_epoch(self) -> None:
        """The epoch is complete: the next one starts at its first batch, order undrawn."""
        self.epoch, self.batch, self.order, self.losses = self.epoch + 1, 0, None, []


class TrainState:
    """Model, optimiser, schedule, scaler, generators, method state and progress of one
    training run (see the module docstring).

    :meth:`create` builds a fresh state in a fixed order (the network's initial weights
    come from torch's global generator, so the caller seeds it first).
    """

    def __init__(
        self, method: Method, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler, scaler: torch.amp.GradScaler, order_generator: torch.Generator,
        progress: Progress | None = None, started: float | None = None,
        accel: Acceleration | None = None, forward: torch.nn.Module | None = None,
        started_cpu: float | None = None,
    ) -> None:
        self.method, self.model, self.optimizer = method, model, optimizer
        # how the model runs (not state: a resumed run may run differently); ``forward`` is
        # what the training step calls (the model, or its torch.compile wrapper)
        self.accel = accel or resolve_acceleration(next(model.parameters()).device, amp="off",
                                                   channels_last="off")
        self.forward = forward if forward is not None else model
        self.scheduler, self.scaler, self.order_generator = scheduler, scaler, order_generator
        self.progress = progress or Progress()
        self.started = time.time() if started is None else started  # this attempt's start
        # this process's CPU time at that start
        self.started_cpu = time.process_time() if started_cpu is None else started_cpu

    @classmethod
    def create(
        cls, method: Method, in_channels: int, device: torch.device, *, lr: float,
        schedule: str, total_steps: int, seed: int, started: float | None = None,
        accel: Acceleration | None = None, started_cpu: float | None = None,
    ) -> TrainState:
        """A fresh state: the method's network on ``device`` (prepared by ``accel``, the
        run's device options; default: ``device``'s defaults), Adam at ``lr``, the
        schedule over ``total_steps`` batches, a gradient scaler (active for fp16 AMP),
        the order generator seeded with ``seed``; ``started``, ``started_cpu``: when this
        attempt began, by the wall clock and by the process's CPU clock (default now)."""
        accel = accel or resolve_acceleration(device)
        model, forward = accel.prepare_model(method.build_model(in_channels))
        order_generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        scheduler = make_scheduler(optimizer, schedule, total_steps)
        scaler = accel.grad_scaler()
        return cls(method, model, optimizer, scheduler, scaler, order_generator, started=started,
                   accel=accel, forward=forward, started_cpu=started_cpu)

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, over every attempt of the run."""
        return self.progress.elapsed + time.time() - self.started

    @property
    def cpu_elapsed(self) -> float:
        """CPU seconds of the training process so far (all its threads; loader worker
        processes not included), over every attempt of the run. On one torch thread and
        no workers this is the wall-clock time the run takes on a core of its own, however
        loaded the machine."""
        return self.progress.cpu_elapsed + time.process_time() - self.started_cpu

    @property
    def lr(self) -> float:
        """The learning rate the next batch will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit (on CPU): ``last.pt``'s contents."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "order_generator": self.order_generator.get_state(), "rng": rng_state(),
            "method_state": self.method.state(),
            "progress": {**dataclasses.asdict(self.progress), "elapsed": self.elapsed,
                         "cpu_elapsed": self.cpu_elapsed},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the global generators included)."""
        self.method.load_state(state["method_state"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.order_generator.set_state(state["order_generator"])
        self.progress = Progress(**state["progress"])
        set_rng_state(state["rng"])
