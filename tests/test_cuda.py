"""The GPU path on a real GPU (issue 17): a training step under AMP, channels-last and
compile, tiled inference, mean-shift on the GPU equal to the CPU's, and a short run of
the harness's loop. Marked ``cuda`` (``pytest -m cuda``, which benchmarks/gpu_check.py
runs); every test skips where CUDA is absent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import benchbio
from benchbio.acceleration import forward_loss, optimizer_step, resolve_acceleration
from benchbio.cluster import embeddings_to_labels, mean_shift
from benchbio.inference import forward_tiled

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def _harmonic(width: int = 8, kernel: int = 3):
    method = benchbio.create_method("harmonic", n_guides=4, width=width, kernel_size=kernel)
    rng = np.random.default_rng(0)
    from benchbio.guides import Guides

    params = np.column_stack([rng.uniform(0, 20, 4), rng.uniform(0, 20, 4),
                              rng.uniform(0, 6, 4)])
    method.guides = Guides(params, 64, 64)
    return method


def _batch(method, size: int = 2, crop: int = 64) -> dict:
    rng = np.random.default_rng(1)
    labels = np.zeros((crop, crop), np.int64)
    labels[8:30, 8:30], labels[36:60, 20:50] = 1, 2
    targets = method.targets(labels, None)
    batch = {k: torch.from_numpy(np.stack([v] * size)) for k, v in targets.items()}
    batch["image"] = torch.from_numpy(rng.random((size, 1, crop, crop), dtype=np.float32))
    return batch


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("channels_last", ["off", "on"])
def test_training_step_under_amp_learns(amp, channels_last):
    device = torch.device("cuda")
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    accel = resolve_acceleration(device, amp, channels_last)
    method = _harmonic()
    torch.manual_seed(0)
    model, forward = accel.prepare_model(method.build_model(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = accel.grad_scaler()
    assert scaler.is_enabled() == (amp == "fp16")
    batch = accel.to_device(_batch(method))
    if channels_last == "on":
        assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    losses = []
    for _ in range(15):
        opt.zero_grad(set_to_none=True)
        loss = forward_loss(method, forward, batch, accel)
        assert loss.dtype == torch.float32
        optimizer_step(loss, opt, scaler)
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_compiled_step_matches_eager_step():
    device = torch.device("cuda")
    method = _harmonic()
    batch = _batch(method)
    results = []
    for compile_ in (False, True):
        accel = resolve_acceleration(device, "off", "off", compile_)
        torch.manual_seed(0)
        model, forward = accel.prepare_model(method.build_model(1))
        loss = forward_loss(method, forward, accel.to_device(batch), accel)
        results.append(loss.item())
        assert not any(k.startswith("_orig_mod") for k in model.state_dict())
    assert results[1] == pytest.approx(results[0], rel=1e-3)


def test_tiled_inference_on_gpu_equals_whole_image_and_cpu():
    method = _harmonic()
    torch.manual_seed(0)
    model = method.build_model(1).eval()
    image = np.random.default_rng(2).random((1, 200, 232), dtype=np.float32)
    cpu = forward_tiled(model, image, torch.device("cpu"), tile=512)
    model.cuda()
    whole = forward_tiled(model, image, torch.device("cuda"), tile=512)
    tiled = forward_tiled(model, image, torch.device("cuda"), tile=96, overlap=64)
    assert whole.shape == cpu.shape == tiled.shape
    # autocast (fp16) on the GPU, float32 on the CPU
    assert torch.allclose(whole, cpu, atol=2e-2)
    assert torch.allclose(tiled, whole, atol=2e-2)


def test_mean_shift_on_gpu_equals_cpu():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(3)
    centres = rng.uniform(-2, 2, (10, 12))
    truth = rng.integers(0, 10, 20000)
    points = (centres[truth] + rng.normal(0, 0.05, (20000, 12))).astype(np.float32)
    cpu_labels, cpu_modes = mean_shift(torch.from_numpy(points), 0.5)
    gpu_labels, gpu_modes = mean_shift(torch.from_numpy(points).cuda(), 0.5)
    assert len(cpu_modes) == len(gpu_modes) == 10
    assert adjusted_rand_score(cpu_labels, gpu_labels) == 1.0
    assert adjusted_rand_score(truth, gpu_labels) == 1.0
    emb = torch.from_numpy(points[:4096].T.reshape(12, 64, 64).copy())
    a = embeddings_to_labels(emb, 0.5)
    b = embeddings_to_labels(emb.cuda(), 0.5)
    assert adjusted_rand_score(a.labels.ravel(), b.labels.ravel()) == 1.0


def test_harness_run_on_gpu_with_workers(tmp_path):
    """The training loop on the GPU: AMP by default, pinned memory, persistent workers."""
    from benchbio.registry import DATASETS
    from benchbio.training import RunConfig, train

    ds = DATASETS.create("synthetic-cells", size=64, n_train=4, n_val=2, n_test=2)
    config = RunConfig(method="harmonic", dataset="synthetic-cells", epochs=3, batch_size=2,
                       crop_size=48, lr=1e-3, device="cuda", workers=2,
                       method_options={"width": 8, "kernel_size": 3, "search_steps": 20})
    method = benchbio.create_method("harmonic", **config.method_options)
    figures = []
    result = train(config, method, ds, tmp_path, lambda k, v, s: figures.append((k, v, s)))
    losses = [v for k, v, _ in figures if k == "train_loss"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert 0.0 <= result.best_val <= 1.0
