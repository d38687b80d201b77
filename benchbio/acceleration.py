"""How a run uses its device: mixed precision, memory format, compilation, data transfer.

Every choice is a :class:`~benchbio.training.RunConfig` option or follows from the device,
and :meth:`Acceleration.params` gives the resolved values that are logged with the run:

* ``amp``: ``auto`` (bf16 autocast on a GPU that supports it, else fp16 with a gradient
  scaler; off on the CPU), ``off``, ``bf16`` (also on the CPU) or ``fp16`` (GPU only).
* ``channels_last``: ``auto`` (on for a GPU, whose convolutions prefer NHWC), ``on``, ``off``.
* ``compile``: ``torch.compile`` the network's training forward pass (``--compile``).
* pinned host memory and non-blocking copies when the device is a GPU; loader workers
  kept alive across epochs whenever there are any.

On the CPU the defaults change nothing, so CPU runs stay bit-identical to what they
were. :func:`forward_loss` and :func:`optimizer_step` are the training step that the
training loop and ``benchmarks/gpu_check.py`` share.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from .errors import BenchbioError
from .nets import position_origins

__all__ = [
    "AMP_MODES",
    "SWITCH_MODES",
    "Acceleration",
    "resolve_acceleration",
    "forward_loss",
    "optimizer_step",
]

AMP_MODES = ("auto", "off", "bf16", "fp16")
SWITCH_MODES = ("auto", "on", "off")


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"  # CPU autocast supports bf16 everywhere (emulated if need be)


@dataclass(frozen=True)
class Acceleration:
    """The resolved device options of a run."""

    device: torch.device
    amp_dtype: torch.dtype | None = None  # None: float32 throughout
    channels_last: bool = False
    compile: bool = False
    pin_memory: bool = False
    non_blocking: bool = False
    compile_backend: str = "inductor"  # tests and the CPU check use "eager"

    @property
    def scaler_enabled(self) -> bool:
        """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not."""
        return self.amp_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of the training forward pass (a no-op without AMP)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16."""
        return torch.amp.GradScaler(self.device.type, enabled=self.scaler_enabled)

    def prepare_model(self, model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
        """``(model, train_forward)``: the network on the device (in channels-last memory
        format if asked), and what the training step calls, compiled if asked. Weights,
        checkpoints and evaluation use ``model`` itself (no ``_orig_mod.`` keys, no
        recompilation for every validation image size)."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        forward = torch.compile(model, backend=self.compile_backend) if self.compile else model
        return model, forward

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A collated batch on the device; the 4-D image in channels-last if asked."""
        out = {k: v.to(self.device, non_blocking=self.non_blocking) for k, v in batch.items()}
        if self.channels_last and "image" in out and out["image"].dim() == 4:
            out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
        return out

    def loader_options(self, workers: int) -> dict[str, Any]:
        """DataLoader keywords: pinned memory for a GPU, persistent workers if any."""
        options: dict[str, Any] = {"num_workers": workers, "pin_memory": self.pin_memory}
        if workers > 0:
            options["persistent_workers"] = True
        return options

    def params(self) -> dict[str, str]:
        """The resolved values, for MLflow (``accel.*`` params)."""
        return {
            "amp_dtype": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype
            else "float32",
            "grad_scaler": str(self.scaler_enabled),
            "channels_last": str(self.channels_last),
            "compile": str(self.compile),
            "pin_memory": str(self.pin_memory),
            "non_blocking": str(self.non_blocking),
        }


def resolve_acceleration(
    device: torch.device, amp: str = "auto", channels_last: str = "auto",
    compile: bool = False,
) -> Acceleration:
    """The options a run on ``device`` uses; one-line errors for those it cannot."""
    if amp not in AMP_MODES:
        raise BenchbioError(f"unknown --amp {amp!r}; use {', '.join(AMP_MODES)}")
    if channels_last not in SWITCH_MODES:
        raise BenchbioError(
            f"unknown --channels-last {channels_last!r}; use {', '.join(SWITCH_MODES)}")
    gpu = device.type == "cuda"
    if amp == "auto":
        dtype = (torch.bfloat16 if _bf16_supported(device) else torch.float16) if gpu else None
    elif amp == "bf16":
        if not _bf16_supported(device):
            raise BenchbioError(f"--amp bf16: {device} does not support bfloat16; use "
                                "--amp fp16 or --amp off")
        dtype = torch.bfloat16
    elif amp == "fp16":
        if not gpu:
            raise BenchbioError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16 "
                                "or --amp off")
        dtype = torch.float16
    else:
        dtype = None
    if compile and not hasattr(torch, "compile"):
        raise BenchbioError("--compile needs PyTorch 2.0 or later; drop --compile")
    return Acceleration(
        device=device, amp_dtype=dtype,
        channels_last=gpu if channels_last == "auto" else channels_last == "on",
        compile=bool(compile), pin_memory=gpu, non_blocking=gpu,
    )


def forward_loss(
    method: Any, forward: torch.nn.Module, batch: dict[str, torch.Tensor],
    accel: Acceleration,
) -> torch.Tensor:
    """The method's loss of one device batch (``image``, the crops' ``origin`` if given,
    plus its targets): the method's :meth:`~benchbio.method.Method.device_targets` of the
    batch, the network run under the run's autocast with its position maps placed at
    each crop's origin, and the loss computed in float32."""
    targets = dict(method.device_targets(batch))
    image, origins = targets.pop("image"), targets.pop("origin", None)
    with position_origins(forward, origins), accel.autocast():
        output = forward(image)
    return method.loss(output.float(), targets)


def optimizer_step(
    loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> None:
    """Backward pass and optimiser step (through the scaler, a no-op unless fp16)."""
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
