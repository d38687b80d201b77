"""Where computations run and how they are made repeatable: the device and the seeds.

Neutral helpers shared by training (:mod:`benchbio.training`), inference
(:mod:`benchbio.inference`) and benchmark scripts, so that applying a model does not
import the training loop.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from .errors import BenchbioError

__all__ = ["resolve_device", "seed_everything", "device_name"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchbioError(
            f"--device {device} asked for, but no CUDA device is available on this machine; "
            "use --device cpu or --device auto"
        )
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise BenchbioError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed the global generators of Python, numpy (with ``seed % 2**32``) and torch (CPU
    and every CUDA device). It does not select deterministic kernels: the training loop
    does that on CPU (``torch.use_deterministic_algorithms``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device_name(device: str | torch.device) -> str:
    """What a run's ``device`` tag says: the GPU's model name, or ``cpu``."""
    resolved = device if isinstance(device, torch.device) else resolve_device(device)
    return torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else "cpu"
