"""The patchperpix method: targets and loss by hand, oracle decoding, training, CLI runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import bench_dataloader_report, train_steps

from benchbio import create_method
from benchbio.cli import main
from benchbio.datasets.synthetic import make_cells, make_worms
from benchbio.errors import BenchbioError
from benchbio.evaluation import evaluate
from benchbio.instances import to_stack
from benchbio.methods.patchperpix import (
    IGNORE,
    device_patch_targets,
    near_overlap_mask,
    patch_targets,
    patchperpix_loss,
)
from benchbio.training import collate_crops


def oracle_output(instances: np.ndarray, k: int, count_head: bool) -> torch.Tensor:
    """Ground-truth patches and counts (or foreground) as confident logits."""
    patch = np.where(patch_targets(instances, k) == 1, 20.0, -20.0)
    count = to_stack(instances).sum(0)
    if count_head:
        head = np.stack([np.where(np.minimum(count, 2) == c, 20.0, -20.0) for c in range(3)])
    else:
        head = np.where(count > 0, 20.0, -20.0)[None]
    return torch.from_numpy(np.concatenate([patch, head]).astype(np.float32))


def test_patch_targets_by_hand():
    # Masks A = columns 0-2 and B = columns 2-3 of a 1 x 4 image overlap at column 2.
    stack = np.zeros((2, 1, 4), bool)
    stack[0, 0, :3] = stack[1, 0, 2:] = True
    t = patch_targets(stack, 3)  # offsets (dy, dx) in raster order; row dy = 0 is 3..5
    assert t.shape == (9, 1, 4)
    assert (t[[0, 1, 2, 6, 7, 8]] == IGNORE).all()  # dy = -1 or 1: outside the image
    # centre 0 (A): left outside, itself, column 1 (A); centre 1 (A): 0, 1, 2 (overlap, in A)
    np.testing.assert_array_equal(t[3:6, 0, 0], [IGNORE, 1, 1])
    np.testing.assert_array_equal(t[3:6, 0, 1], [1, 1, 1])
    np.testing.assert_array_equal(t[3:6, 0, 2], [0, 0, 0])  # an overlap centre: no target
    np.testing.assert_array_equal(t[3:6, 0, 3], [1, 1, IGNORE])  # B: the overlap is in B
    labels = np.array([[1, 1, 2, 0]])
    np.testing.assert_array_equal(patch_targets(labels, 3)[3:6, 0, 1], [1, 1, 0])


def test_loss_by_hand_foreground_head():
    # Label image [[1, 0]], k = 3, all logits 0: the one instance pixel has 2 offsets in
    # the image, each ln 2, divided by the patch size 9; foreground BCE ln 2 per pixel.
    labels = np.array([[1, 0]])
    method = create_method("patchperpix", patch_size=3)
    targets = method.device_targets({k: torch.from_numpy(np.asarray(v))[None] for k, v in
                                     method.targets(labels, None).items()})
    loss = method.loss(torch.zeros(1, 10, 1, 2), targets)
    assert loss.item() == pytest.approx(math.log(2) * (1 + 2 / 9))


def test_loss_by_hand_count_head_and_overlap_share():
    # Masks A = columns 0-2 and B = 2-3 of a 1 x 4 image; single-owner pixels 0, 1, 3
    # with 2, 3, 2 offsets in the image; pixels 1 and 3 are within 1 of the overlap.
    stack = np.zeros((2, 1, 4), bool)
    stack[0, 0, :3] = stack[1, 0, 2:] = True
    patch = torch.from_numpy(patch_targets(stack, 3))[None]
    count = torch.tensor([[[1, 1, 2, 1]]])
    near = torch.tensor([[[False, True, False, True]]])
    loss = patchperpix_loss(torch.zeros(1, 12, 1, 4), patch, count, near, patch_size=3,
                            count_head=True, overlap_share=0.5)
    per_pixel = np.log(2) * np.array([2, 3, 2]) / 9
    expected = 0.5 * per_pixel.mean() + 0.5 * per_pixel[1:].mean() + math.log(3)
    assert loss.item() == pytest.approx(expected)
    # a confident, correct output has (almost) no loss
    assert patchperpix_loss(oracle_output(stack, 3, True)[None], patch, count, near,
                            patch_size=3, count_head=True).item() < 1e-6


def reference_patchperpix_targets(method, instances: np.ndarray) -> dict[str, np.ndarray]:
    """The per-crop targets the loader built before the patches moved to the device
    (``benchmarks/bench_dataloader.py --reference`` times them): dense k*k patches."""
    stack = to_stack(instances)
    count = stack.sum(0) if len(stack) else np.zeros(instances.shape[-2:], np.int64)
    return {"patch": patch_targets(instances, method.opts.patch_size),
            "count": count.astype(np.int64),
            "near_overlap": near_overlap_mask(instances, method.opts.overlap_max_dist)}


def _crop_batch(method, crops):
    """Collated loader items of ``crops`` (what a loader worker ships)."""
    return collate_crops([{k: torch.from_numpy(np.asarray(v)) for k, v in
                           method.targets(c, None).items()} for c in crops])


def _worm_crops(size=36):
    """Mask stacks with overlaps, one crop without any, one with no instance at all."""
    crops = [make_worms(seed, size=size)[1] for seed in range(3)]
    assert all((c.sum(0) > 1).any() for c in crops)
    return crops + [crops[0][:1], crops[0][:0]]


@pytest.mark.parametrize("k", [3, 7, 15])
def test_device_targets_equal_the_per_crop_patch_targets(k):
    """The batch's patches, built by device_targets from what the loader ships, are
    patch_targets of each crop, bit for bit: overlaps (a neighbour in an overlap counts
    for each of its instances), crops padded with empty masks, offsets outside the crop,
    label images, and overlaps spread over several chunks."""
    method = create_method("patchperpix", patch_size=k)
    stacks = _worm_crops()
    batch = _crop_batch(method, stacks)
    expected = np.stack([patch_targets(c, k) for c in stacks])
    got = method.device_targets(batch)
    assert set(got) == {"patch", "count", "near_overlap"}
    assert got["patch"].dtype == torch.uint8
    np.testing.assert_array_equal(got["patch"].numpy(), expected)
    np.testing.assert_array_equal(
        device_patch_targets(batch["owner"], batch["members"], k, chunk=5).numpy(), expected)
    np.testing.assert_array_equal(got["count"].numpy(),
                                  np.stack([to_stack(c).sum(0) for c in stacks]))
    np.testing.assert_array_equal(got["near_overlap"].numpy(),
                                  np.stack([near_overlap_mask(c, 15) for c in stacks]))
    labels = [make_cells(seed, size=30)[1] for seed in range(2)]
    got = method.device_targets(_crop_batch(method, labels))
    np.testing.assert_array_equal(got["patch"].numpy(),
                                  np.stack([patch_targets(c, k) for c in labels]))


def test_loader_ships_no_patches_and_no_masks_without_overlaps():
    method = create_method("patchperpix", patch_size=41)
    _, labels = make_cells(0, size=64)
    item = method.targets(labels, None)
    assert item["members"].shape == (0, 64, 64) and item["owner"].dtype == np.int32
    assert sum(v.nbytes for v in item.values()) < 64 * 64 * 16  # not k*k bytes a pixel
    stack = _worm_crops()[0]
    assert method.targets(stack, None)["members"].shape == to_stack(stack).shape


def test_loss_equals_the_loss_of_the_per_crop_targets():
    """The loss of a batch through device_targets equals the loss of the dense targets
    the loader used to build per crop (patch_targets, count, near_overlap_mask)."""
    k = 7
    method = create_method("patchperpix", patch_size=k, head="count")
    stacks = _worm_crops()
    old = collate_crops([{key: torch.from_numpy(v) for key, v in
                          reference_patchperpix_targets(method, c).items()} for c in stacks])
    output = torch.randn(len(stacks), method.out_channels, *stacks[0].shape[1:],
                         generator=torch.Generator().manual_seed(0))
    new = method.device_targets(_crop_batch(method, stacks))
    assert method.loss(output, new).item() == pytest.approx(method.loss(output, old).item(),
                                                            rel=1e-6)


def test_oracle_cells_give_sbd_one():
    method = create_method("patchperpix", patch_size=9)
    preds, gts = [], []
    for seed in range(2):
        _, labels = make_cells(seed, size=64)
        pred = method.postprocess(oracle_output(labels, 9, False), None, min_area=5)
        assert pred.labels.ndim == 2  # a label image where instances do not overlap
        assert sorted(pred.scores) == list(range(1, int(pred.labels.max()) + 1))
        preds.append(pred)
        gts.append(labels)
    assert evaluate(preds, gts, ["sbd"]).mean["sbd"] == pytest.approx(1.0)


def test_oracle_worms_give_ap_and_avs_one_with_overlaps():
    # The patch must see across every stretch where two worms overlap entirely (the
    # decode cannot tell which ends belong together otherwise): 21 here.
    method = create_method("patchperpix", patch_size=21, head="count")
    preds, gts = [], []
    for seed in range(3):
        fg, stack = make_worms(seed, size=128)
        assert (stack.sum(0) > 1).any()
        pred = method.postprocess(oracle_output(stack, 21, True), fg[0] > 0.5, min_area=5)
        assert pred.labels.ndim == 3 and (pred.labels.sum(0) > 1).any()  # overlapping masks
        assert sorted(pred.scores) == list(range(len(pred.labels)))
        preds.append(pred)
        gts.append(stack)
    result = evaluate(preds, gts, ["coco", "avs"]).mean
    assert result["ap"] == pytest.approx(1.0)
    assert result["avs"] == pytest.approx(1.0)


def test_nothing_found_is_an_empty_label_image():
    method = create_method("patchperpix", patch_size=5, head="count")
    output = torch.full((28, 16, 16), -20.0)
    output[25] = 20.0  # count 0 everywhere
    pred = method.postprocess(output, None, min_area=0)
    assert pred.labels.shape == (16, 16) and pred.labels.max() == 0 and pred.scores == {}


def test_unflip_maps_the_flipped_oracle_back():
    _, labels = make_cells(3, size=32)
    method = create_method("patchperpix", patch_size=5)
    flipped = oracle_output(np.ascontiguousarray(labels[:, ::-1]), 5, False)
    np.testing.assert_array_equal(method.unflip(flipped, (-1,)).numpy(),
                                  oracle_output(labels, 5, False).numpy())


def test_head_follows_the_training_data():
    from benchbio.data import Sample

    method = create_method("patchperpix", patch_size=5)
    fg, stack = make_worms(0, size=32)
    method.fit([Sample("w", fg, stack)], seed=0)
    assert method.count_head and method.out_channels == 25 + 3
    restored = create_method("patchperpix", patch_size=5)
    restored.load_state(method.state())
    assert restored.out_channels == 28
    assert create_method("patchperpix", patch_size=5).out_channels == 26  # fg head


@pytest.mark.parametrize("options", [{"patch_size": 4}, {"head": "both"},
                                     {"patch_threshold": 1.5}, {"rank_pairs": 0}])
def test_bad_options_are_one_clear_error(options):
    with pytest.raises(BenchbioError):
        create_method("patchperpix", **options)


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    method = create_method("patchperpix", patch_size=5, width=8, head="count")
    crops = [make_worms(s, size=32) for s in range(2)]
    losses = train_steps(method, [c[0] for c in crops], [c[1] for c in crops], steps=10)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


@pytest.mark.slow
def test_benchbio_run_on_a_mask_stack_dataset():
    # (the label-image run is tests/test_methods_run.py's, as for every method)
    data = [f"--data-opt={kv}" for kv in ("n_train=2", "n_val=1", "n_test=1", "size=32")]
    args = ["run", "--method", "patchperpix", "--dataset", "synthetic-worms", "--epochs", "1",
            "--batch-size", "2", "--crop-size", "32", "--device", "cpu", "--no-track",
            "--set", "width=8", "--set", "patch_size=5", *data]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "avs" in result.output and "ap" in result.output


def test_bench_dataloader_times_the_device_targets_apart(tmp_path):
    """The data-path benchmark reports the patches built on the device in their own
    column, not in the workers' figure; before #17 they were the worker's, per crop."""
    text = bench_dataloader_report(tmp_path, "patchperpix", "embedseg")
    rows = {cells[0]: cells for line in text.splitlines()
            if line.startswith("| ") and len(cells := [c.strip() for c in
                                                        line.strip("|").split("|")]) == 10}
    assert "device targets: CPU ms" in rows["method"][-1]
    assert float(rows["patchperpix"][-1]) > 0.0  # built on the device
    assert float(rows["embedseg"][-1]) == 0.0
    assert float(rows["patchperpix (before #17)"][-1]) == 0.0
    # the worker ships owner maps, not 41 x 41 patches per pixel
    assert float(rows["patchperpix"][7]) < float(rows["patchperpix (before #17)"][7]) / 50
