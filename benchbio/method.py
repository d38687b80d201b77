"""The method interface every method plugin implements.

A method turns annotated crops into training targets, defines the network and the loss,
and turns one network output back into instances. The harness's single training loop
(:mod:`benchbio.training`) and single evaluation path call only these hooks, so a new
method is one new module in ``methods/`` registered with
:func:`benchbio.registry.register_method`.

Options are a dataclass per method (``Options``), so ``--set key=value`` on the command
line, a sweep spec or a Python caller's keywords are checked against the fields, typed
(``typing.Literal`` fields against their choices) by :func:`benchbio.options.coerce_options`,
and logged to MLflow as resolved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .data import Sample
from .instances import Prediction
from .options import coerce_options, parse_value
from .registry import register_method

__all__ = ["MethodOptions", "Method", "OverfitCheck", "register_variant",
           "parse_option_value", "LogFn"]

#: The one command-line value parser (:func:`benchbio.options.parse_value`), kept here
#: under its old name.
parse_option_value = parse_value

LogFn = Callable[[str, float, int], None]
"""``log(key, value, step)``: how methods report figures (to MLflow during a run)."""


@dataclasses.dataclass
class MethodOptions:
    """Knobs every method has; methods subclass this to add their own.

    Attributes:
        encoder: "unet" for the paper's plain U-Net encoder, or any
            segmentation-models-pytorch encoder name ("resnet34", "tu-<timm name>").
        encoder_weights: path of a local weights file for the encoder, or None (no
            download is ever attempted).
        width: channels of the first U-Net level (paper: 64; later levels 2x, 4x, 8x, 8x).
        min_area: instances smaller than this (pixels) are dropped; None: the dataset's.
    """

    encoder: str = "unet"
    encoder_weights: str | None = None
    width: int = 64
    min_area: int | None = None


#: The logit :func:`saturated_logit` gives a certain 1 (sigmoid 0.99966, above every
#: threshold the methods use).
SATURATED_LOGIT = 8.0


def saturated_logit(target: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float32 logits of a 0/1 target: +8 where it is 1, -8 elsewhere (for
    :meth:`Method.ideal_output`)."""
    target = torch.as_tensor(np.asarray(target) if isinstance(target, np.ndarray) else target)
    return torch.where(target == 1, SATURATED_LOGIT, -SATURATED_LOGIT).to(torch.float32)


@dataclasses.dataclass(frozen=True)
class OverfitCheck:
    """How a method shows that it learns: trained on one image, scored on that image.

    :func:`benchbio.overfit.overfit` trains the method's own network (built with
    ``options``) on image 0 of the ``dataset``'s train split (with ``dataset_options``)
    with Adam at ``lr`` (under ``lr_schedule``, a name of
    :data:`benchbio.state.LR_SCHEDULES` over ``steps``, as ``benchbio run
    --lr-schedule``) for up to ``steps`` full-image steps, scores that image with the
    result key ``metric`` every ``eval_every`` steps and passes once the score reaches
    ``threshold`` within ``steps`` and ``cpu_seconds`` (CPU time of the check's single
    torch thread, ``time.process_time()``, so the budget does not depend on what else the
    machine runs). ``in_suite``: False leaves the method to ``benchmarks/overfit.py``
    only (the test suite's time budget); :func:`register_variant` sets it for variants,
    whose hooks their base's check covers. ``cannot_pass``: None, or why the method does
    not reach ``threshold`` within the budget (by design, or measured too slow), with its
    measured best (the table: ``results/bench/overfit.md``); such a check is never in
    the suite, and is declared, not skipped silently. The standard checks, which name
    dataset plugins, are plugin-side: ``benchbio.datasets.synthetic.OVERFIT_CHECK`` (what
    a method that declares none gets) and ``OVERLAPS_CHECK``.
    """

    dataset: str
    metric: str
    dataset_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=lambda: {"width": 16})
    lr: float = 3e-3
    lr_schedule: str = "constant"
    steps: int = 600
    eval_every: int = 50
    threshold: float = 0.95
    cpu_seconds: float = 120.0
    in_suite: bool = True
    cannot_pass: str | None = None

    def __post_init__(self) -> None:
        if self.cannot_pass and self.in_suite:
            raise ValueError("an overfit check that cannot pass cannot be in the test suite "
                             "(give in_suite=False)")


class Method:
    """Base class of method plugins; subclasses implement the hooks below."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    #: How ``tests/test_overfit.py`` and ``benchmarks/overfit.py`` check that it learns;
    #: None: the standard check (``benchbio.datasets.synthetic.OVERFIT_CHECK``).
    overfit: ClassVar[OverfitCheck | None] = None

    def __init__(self, **options: Any) -> None:
        self.opts = coerce_options(self.Options, options, f"method {self.name!r}")

    # ------------------------------------------------------------------ options/state
    def options(self) -> dict[str, Any]:
        """The resolved options, as logged to MLflow."""
        return dataclasses.asdict(self.opts)

    def fit(self, train: Sequence[Sample], *, seed: int, log: LogFn | None = None) -> None:
        """Fit whatever the method needs from the training data before the network trains
        (e.g. harmonic's guide search). Default: nothing."""

    def state(self) -> dict[str, Any]:
        """The fitted state as JSON-able data, saved with every checkpoint."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""

    def write_artifacts(self, folder: Path) -> list[Path]:
        """Write files describing the fitted state (JSON, PNG) into ``folder``."""
        return []

    # ------------------------------------------------------------------ training
    def build_model(self, in_channels: int) -> nn.Module:
        """The network: ``(B, in_channels, H, W)`` -> ``(B, C_out, H, W)``."""
        raise NotImplementedError

    def targets(
        self, instances: np.ndarray, fg: np.ndarray | None, origin: tuple[int, int] = (0, 0)
    ) -> dict[str, np.ndarray]:
        """Training targets for one (augmented) crop, as arrays the loader stacks.

        ``instances`` is a label image or mask stack of the crop (lowest label =
        background); ``fg`` the protocol's foreground mask or None; ``origin`` the
        crop's top-left pixel (row, col) in its whole image, where the network's
        position maps place it (:func:`benchbio.nets.position_origins`): targets that
        depend on absolute position (harmonic's guides) use it, others ignore it.
        """
        raise NotImplementedError

    def device_targets(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Targets built from a whole collated batch on the training device.

        The training step (:func:`benchbio.acceleration.forward_loss`) calls this once per
        batch, after the batch (``image``, ``origin`` and what :meth:`targets` returned,
        stacked) is on the device and before the forward pass; :meth:`loss` receives what
        it returns, less ``image`` and ``origin``. A method whose targets are too large to
        build and ship in a loader worker (PatchPerPix's patch per pixel) returns compact
        inputs from :meth:`targets` and expands them here, vectorised over the batch, on
        the device. It must not change ``batch`` itself (a benchmark steps on one device
        batch again and again). Default: the batch itself, unchanged.
        """
        return batch

    def loss(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar loss of a batch of network outputs against stacked targets."""
        raise NotImplementedError

    # ------------------------------------------------------------------ inference
    def postprocess(
        self, output: torch.Tensor, fg: np.ndarray | None, min_area: int
    ) -> Prediction | np.ndarray:
        """Instances from one output ``(C, H, W)``, with a confidence per instance.

        Returns a :class:`~benchbio.instances.Prediction`: ``labels`` a label image
        (0 = background, instances 1..n, none smaller than ``min_area``) and ``scores``
        ``{label: confidence}`` for every instance (COCO AP ranks by it). A bare label
        image is accepted too; its instances then score ``area / (area + 1)``
        (:func:`~benchbio.instances.default_scores`). ``fg`` is the protocol's foreground
        mask when it gives one at test time.
        """
        raise NotImplementedError

    def ideal_output(self, instances: np.ndarray, fg: np.ndarray | None) -> torch.Tensor | None:
        """The ``(C, H, W)`` output a perfect network would give on this whole image (its
        targets as the network's channels: logits saturated where the targets are
        probabilities), or None where the method defines none. Handing it to
        :meth:`postprocess` measures the *ceiling* of the method's post-processing: what
        a network that learns its targets reaches (its errors may land above it by
        chance; ``benchmarks/overfit_target_ceiling.py``, results/bench/overfit.md).
        Call after :meth:`fit`. Default None."""
        return None

    def unflip(self, output: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor | None:
        """For flip test-time augmentation: the ``(C, H, W)`` output of the input flipped
        along ``dims``, mapped back to the unflipped image (spatial flip plus whatever the
        channels mean), or None when no such map exists. Default None: e.g. harmonic
        embeddings are functions of absolute position, so a flipped image has other
        targets, not flipped ones."""
        return None


def register_variant(
    name: str, base: type[Method], description: str, *,
    overfit: dict[str, Any] | None = None, **overrides: Any
) -> Callable[..., Method]:
    """Register method ``name``: ``base`` with other option defaults, in one line.

    As timm's ``_create_resnet(name, **dict(model_args, **kwargs))``: the variant's
    factory creates ``base`` with ``dict(overrides, **options)``, so options given on the
    command line still win, and the variant is ``base`` in everything (hooks, options
    dataclass, checks) but its name and those defaults. Returns the factory.
    ``overfit``: changes to the base's overfit check for this variant (e.g. its own
    ``lr``, or ``cannot_pass`` with the reason); the variant's check is out of the test
    suite (its hooks are its base's, which the base's check runs there) and is run by
    ``benchmarks/overfit.py``.
    """
    check = (dataclasses.replace(base.overfit, **{**(overfit or {}), "in_suite": False})
             if base.overfit else None)
    cls = type(f"{base.__name__}Variant", (base,),
               {"name": name, "__doc__": description, "__module__": base.__module__,
                "overfit": check})

    def factory(**options: Any) -> Method:
        return cls(**dict(overrides, **options))

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__module__ = base.__module__
    factory.__doc__ = description
    return register_method(name, description=description)(factory)
