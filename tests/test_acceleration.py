"""Device options of a run (issue 17), exercised on the CPU where PyTorch allows: bf16
autocast, channels-last, torch.compile of a tiny network; CPU defaults change nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import benchbio
from benchbio.acceleration import (
    forward_loss,
    optimizer_step,
    resolve_acceleration,
)
from benchbio.errors import BenchbioError
from benchbio.guides import Guides

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CPU = torch.device("cpu")


def _method():
    method = benchbio.create_method("harmonic", n_guides=4, width=4, kernel_size=3)
    rng = np.random.default_rng(0)
    method.guides = Guides(np.column_stack([rng.uniform(0, 20, 4), rng.uniform(0, 20, 4),
                                            rng.uniform(0, 6, 4)]), 32, 32)
    return method


def _batch(method, size=2, crop=32):
    labels = np.zeros((crop, crop), np.int64)
    labels[4:14, 4:14], labels[18:30, 10:28] = 1, 2
    from benchbio.training import collate_crops

    items = [{k: torch.from_numpy(np.asarray(v)) for k, v in method.targets(labels, None).items()}
             for _ in range(size)]
    batch = collate_crops(items)
    batch["image"] = torch.from_numpy(
        np.random.default_rng(1).random((size, 1, crop, crop), dtype=np.float32))
    return batch


def test_cpu_defaults_are_plain_float32():
    accel = resolve_acceleration(CPU)
    assert accel.amp_dtype is None and not accel.channels_last and not accel.compile
    assert not accel.pin_memory and not accel.non_blocking and not accel.scaler_enabled
    assert accel.loader_options(0) == {"num_workers": 0, "pin_memory": False}
    assert accel.loader_options(3)["persistent_workers"] is True
    assert accel.params()["amp_dtype"] == "float32"


def test_bad_options_are_one_line_errors():
    with pytest.raises(BenchbioError, match="unknown --amp"):
        resolve_acceleration(CPU, amp="half")
    with pytest.raises(BenchbioError, match="needs a CUDA device"):
        resolve_acceleration(CPU, amp="fp16")
    with pytest.raises(BenchbioError, match="unknown --channels-last"):
        resolve_acceleration(CPU, channels_last="yes")


def _steps(accel, steps=3):
    method = _method()
    torch.manual_seed(0)
    model, forward = accel.prepare_model(method.build_model(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = accel.grad_scaler()
    batch = accel.to_device(_batch(method))
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = forward_loss(method, forward, batch, accel)
        optimizer_step(loss, opt, scaler)
        losses.append(loss.item())
    return losses, model


def test_default_step_equals_the_plain_float32_step():
    """The CPU defaults run exactly the step the loop ran before issue 17."""
    method = _method()
    torch.manual_seed(0)
    model = method.build_model(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = _batch(method)
    plain = []
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        targets = dict(batch)
        out = model(targets.pop("image"))
        loss = method.loss(out.float(), targets)
        loss.backward()
        opt.step()
        plain.append(loss.item())
    assert _steps(resolve_acceleration(CPU))[0] == plain


def test_bf16_autocast_on_cpu_trains():
    accel = resolve_acceleration(CPU, amp="bf16")
    assert accel.amp_dtype == torch.bfloat16 and not accel.scaler_enabled
    method = _method()
    model = method.build_model(1)
    with accel.autocast():
        out = model(_batch(method)["image"])
    assert out.dtype == torch.bfloat16
    losses, _ = _steps(accel, steps=6)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert accel.params()["amp_dtype"] == "bfloat16"


def test_channels_last_on_cpu_gives_the_same_losses():
    accel = resolve_acceleration(CPU, channels_last="on")
    assert accel.channels_last
    batch = accel.to_device(_batch(_method()))
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    losses, model = _steps(accel)
    plain, _ = _steps(resolve_acceleration(CPU))
    np.testing.assert_allclose(losses, plain, rtol=2e-3)  # other kernels, same maths


def test_compile_wraps_only_the_training_forward():
    accel = dataclasses.replace(resolve_acceleration(CPU, compile=True),
                                compile_backend="eager")
    losses, model = _steps(accel)
    plain, _ = _steps(resolve_acceleration(CPU))
    np.testing.assert_allclose(losses, plain, rtol=1e-5)
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())
    assert accel.params()["compile"] == "True"


@pytest.mark.slow
def test_inductor_compile_of_a_tiny_network():
    """The real compiler (inductor, C++ on the CPU) on a tiny network."""
    accel = resolve_acceleration(CPU, compile=True)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1))
    model, forward = accel.prepare_model(net)
    x = torch.rand(2, 1, 16, 16)
    assert forward is not model
    torch.testing.assert_close(forward(x), model(x), rtol=1e-4, atol=1e-5)


def test_forward_loss_places_position_maps_at_the_batch_origins():
    """A batch's ``origin`` (the crops' positions) is not a target: forward_loss runs the
    network with its position maps there (compiled or not) and restores them after."""
    from benchbio.nets import PositionMaps, position_origins

    method = _method()
    torch.manual_seed(0)
    model = method.build_model(1)
    batch = _batch(method)
    origins = torch.tensor([[0.0, 0.0], [5.0, 11.0]])
    with position_origins(model, origins):
        expected = method.loss(model(batch["image"]).float(),
                               {k: v for k, v in batch.items() if k != "image"})
    at_corner = forward_loss(method, model, batch, resolve_acceleration(CPU))
    with_origin = {**batch, "origin": origins}
    for backend in (None, "eager"):
        accel = resolve_acceleration(CPU)
        forward = model
        if backend:
            accel = dataclasses.replace(resolve_acceleration(CPU, compile=True),
                                        compile_backend=backend)
            forward = torch.compile(model, backend=backend)
        loss = forward_loss(method, forward, with_origin, accel)
        torch.testing.assert_close(loss, expected)
        assert not torch.equal(loss, at_corner)
    assert all(m.origins is None for m in model.modules() if isinstance(m, PositionMaps))
