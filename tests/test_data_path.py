"""The training data path (augmentation, relabelling, method targets) after its speed-ups
(issue 17) gives exactly what the straightforward versions below gave: the same crops
and the same targets, bit for bit, so CPU training figures do not move."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import bench_dataloader_report
from skimage.segmentation import relabel_sequential

import benchbio
from benchbio.data import Sample
from benchbio.guides import Guides
from benchbio.instances import crop_instances, is_stack, owner_map, relabel, to_stack
from benchbio.methods.harmonic import expand_targets, harmonic_targets
from benchbio.training import CropDataset, augment, collate_crops


# ------------------------------------------------------------- reference implementations
def reference_sequential(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int64)
    if labels.min() < 0:
        raise ValueError("negative label")
    out, _, _ = relabel_sequential(labels.astype(np.int64))
    return out.astype(np.int64)


def reference_relabel(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int64)
    out, _, _ = relabel_sequential(labels.astype(np.int64) - labels.min())
    return out.astype(np.int64)


def _resize(arr, size, mode):
    t = torch.from_numpy(np.ascontiguousarray(arr)).float()[None]
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest-exact")[0].numpy()
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].numpy()


def reference_augment(sample, crop, scale, rng):
    """The augmentation as it was before issue 17: resize everything, pad, crop, flip;
    with the crop's origin in the rescaled, padded (and, when flipped, mirrored) image."""
    image, instances, fg = sample.image, np.asarray(sample.instances), sample.fg
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    h, w = image.shape[1:]
    if abs(s - 1) > 1e-3:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        image = _resize(image, size, "bilinear").astype(np.float32)
        lab = instances if is_stack(instances) else instances[None]
        lab = _resize(lab.astype(np.float32), size, "nearest").astype(lab.dtype)
        instances = lab if is_stack(instances) else lab[0]
        if fg is not None:
            fg = _resize(fg[None].astype(np.float32), size, "nearest")[0] > 0.5
        h, w = size
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)))
        pad = ((0, 0), (0, ph), (0, pw)) if is_stack(instances) else ((0, ph), (0, pw))
        instances = np.pad(instances, pad)
        fg = np.pad(fg, ((0, ph), (0, pw))) if fg is not None else None
        h, w = h + ph, w + pw
    y0, x0 = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    sl = (slice(y0, y0 + crop), slice(x0, x0 + crop))
    image = image[(slice(None), *sl)]
    instances = crop_instances(instances, sl)
    fg = fg[sl] if fg is not None else None
    if rng.random() < 0.5:
        image, instances = image[..., ::-1], instances[..., ::-1]
        fg = fg[..., ::-1] if fg is not None else None
        x0 = w - x0 - crop
    return np.ascontiguousarray(image), np.ascontiguousarray(instances), (
        np.ascontiguousarray(fg) if fg is not None else None), (y0, x0)


def reference_owner_map(instances):
    instances = np.asarray(instances)
    if not is_stack(instances):
        return reference_sequential(instances)
    stack = to_stack(instances)
    out = np.zeros(stack.shape[1:], dtype=np.int64)
    if len(stack) == 0:
        return out
    counts = stack.sum(axis=0)
    first = np.argmax(stack, axis=0) + 1
    out[counts == 1] = first[counts == 1]
    out[counts > 1] = -1
    return out


def reference_harmonic_targets(guides, instances, fg, origin=(0, 0), pixel_weight="uniform"):
    """Harmonic's targets as they were: maps evaluated per crop (at its origin), (H, W, N)
    gather; log-area pixel weights as the authors' code."""
    h, w = instances.shape[-2:]
    maps = guides.maps(h, w, origin).astype(np.float32)
    owner = reference_owner_map(instances)
    if is_stack(instances):
        stack = to_stack(instances).astype(np.float32)
        area = stack.sum(axis=(1, 2))
        means = np.einsum("khw,nhw->kn", stack, maps) / np.maximum(area, 1)[:, None]
        n_obj = len(stack)
    else:
        n_obj = int(owner.max(initial=0))
        counts = np.bincount(owner.ravel(), minlength=n_obj + 1).astype(np.float32)
        sums = np.stack(
            [np.bincount(owner.ravel(), m.ravel(), minlength=n_obj + 1) for m in maps], 1)
        means = (sums / np.maximum(counts, 1)[:, None])[1:]
    background = owner == 0
    bg_mean = maps[:, background].mean(1) if background.any() else np.zeros(len(maps))
    table = np.vstack([bg_mean[None], means]).astype(np.float32)
    target = table[np.clip(owner, 0, None)].transpose(2, 0, 1)
    weight = ((owner > 0) & np.asarray(fg, bool) if fg is not None else owner >= 0
              ).astype(np.float32)
    if pixel_weight == "log_area":
        counts = np.bincount(np.clip(owner, 0, None).ravel(), minlength=n_obj + 1)
        per_owner = 1.0 / np.log(np.maximum(counts, 2)).astype(np.float32)
        weight = weight * per_owner[np.clip(owner, 0, None)]
    return {"embedding": np.ascontiguousarray(target), "weight": weight.astype(np.float32)}


# ------------------------------------------------------------- random inputs
def random_labels(rng, h, w, n, *, low=0, dtype=np.int32, sparse=False):
    """A label image of ``n`` rectangles-and-noise instances with arbitrary ids."""
    ids = rng.choice(np.arange(1, 10 * n + 2), n, replace=False) if sparse else np.arange(1, n + 1)
    labels = np.zeros((h, w), np.int64)
    for i in ids:
        y, x = rng.integers(0, h), rng.integers(0, w)
        labels[y:y + rng.integers(1, h // 2 + 2), x:x + rng.integers(1, w // 2 + 2)] = i
    return (labels + low).astype(dtype)


def random_stack(rng, h, w, k):
    stack = np.zeros((k, h, w), bool)
    for i in range(k):
        y, x = rng.integers(0, h), rng.integers(0, w)
        stack[i, y:y + rng.integers(1, h // 2 + 2), x:x + rng.integers(1, w // 2 + 2)] = True
    return stack


def _guides(n=6, size=40):
    rng = np.random.default_rng(3)
    params = np.column_stack([rng.uniform(0, 40, n), rng.uniform(0, 40, n),
                              rng.uniform(0, 6, n)])
    return Guides(params, size, size + 5)


# ------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", range(12))
def test_relabel_equals_relabel_sequential(seed):
    rng = np.random.default_rng(seed)
    dtype = [np.uint8, np.int32, np.int64, np.uint16][seed % 4]
    low = 0 if dtype in (np.uint8, np.uint16) else int(rng.integers(-50, 50))
    labels = random_labels(rng, 37, 29, int(rng.integers(0, 12)), low=low, dtype=dtype,
                           sparse=seed % 2 == 0)
    out = relabel(labels)
    assert out.dtype == np.int64
    assert np.array_equal(out, reference_relabel(labels))


@pytest.mark.parametrize("seed", range(8))
def test_sequential_equals_relabel_sequential(seed):
    from benchbio.instances import sequential

    rng = np.random.default_rng(50 + seed)
    dtype = [np.uint8, np.int32, np.int64, np.uint32][seed % 4]
    labels = random_labels(rng, 31, 27, int(rng.integers(0, 12)), dtype=dtype,
                           sparse=seed % 2 == 0)
    if seed % 3 == 0:
        labels[labels == 0] = 3  # no background: every object kept
    out = sequential(labels)
    assert out.dtype == np.int64 and np.array_equal(out, reference_sequential(labels))
    assert not np.shares_memory(out, labels)


def test_relabel_edge_cases():
    huge = np.array([[0, 2**40], [7, 2**40]], np.int64)  # ids far beyond the pixel count
    assert np.array_equal(relabel(huge), reference_relabel(huge))
    flat = np.full((3, 4), 9, np.uint8)
    assert np.array_equal(relabel(flat), np.zeros((3, 4), np.int64))
    already = np.array([[0, 1], [2, 2]])
    out = relabel(already)
    assert np.array_equal(out, already) and out is not already
    assert relabel(np.zeros((0, 3), int)).shape == (0, 3)


@pytest.mark.parametrize("seed", range(16))
def test_augment_gives_the_crops_it_gave_before(seed):
    rng = np.random.default_rng(100 + seed)
    h, w = int(rng.integers(20, 70)), int(rng.integers(20, 70))
    image = rng.random((int(rng.integers(1, 4)), h, w)).astype(np.float32)
    stack = seed % 3 == 0
    instances = random_stack(rng, h, w, 5) if stack else random_labels(
        rng, h, w, 8, sparse=True)  # background 0, as every loaded sample has
    fg = (rng.random((h, w)) < 0.5) if seed % 2 else None
    sample = Sample("s", image, instances, fg)
    crop = int(rng.choice([16, 32, 48, 80]))  # some larger than the image: padding
    scale = [(0.8, 1.25), (1.0, 1.0), (0.5, 2.0)][seed % 3]
    for draw in range(4):
        got = augment(sample, crop, scale, np.random.default_rng([seed, draw]))
        want = reference_augment(sample, crop, scale, np.random.default_rng([seed, draw]))
        assert got[3] == want[3]  # the crop's origin
        for a, b in zip(got[:3], want[:3]):
            if b is None:
                assert a is None
                continue
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b)


@pytest.mark.parametrize("seed", range(10))
def test_harmonic_targets_equal_the_reference(seed):
    rng = np.random.default_rng(200 + seed)
    g = _guides()
    h, w = int(rng.integers(8, 60)), int(rng.integers(8, 60))
    if seed % 3 == 0:
        instances = random_stack(rng, h, w, int(rng.integers(0, 6)))
    else:
        instances = random_labels(rng, h, w, int(rng.integers(0, 15)), sparse=seed % 2 == 0)
    fg = (rng.random((h, w)) < 0.6) if seed % 2 else None
    for _ in range(2):  # the second call reads the cached guide maps
        got = harmonic_targets(g, instances, fg)
        want = reference_harmonic_targets(g, instances, fg)
        assert set(got) == set(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape
            assert np.array_equal(got[key], want[key]), key
            assert got[key].flags.c_contiguous


@pytest.mark.parametrize("seed", range(6))
def test_harmonic_targets_at_an_origin_and_log_area_equal_the_reference(seed):
    rng = np.random.default_rng(300 + seed)
    g = _guides()
    h, w = int(rng.integers(8, 40)), int(rng.integers(8, 40))
    instances = random_stack(rng, h, w, 4) if seed % 3 == 0 else random_labels(
        rng, h, w, int(rng.integers(0, 10)))
    fg = (rng.random((h, w)) < 0.6) if seed % 2 else None
    origin = (int(rng.integers(0, 30)), int(rng.integers(1, 30)))
    for pixel_weight in ("uniform", "log_area"):
        for at in ((0, 0), origin, (0, 0)):  # the shifted maps do not touch the cache
            got = harmonic_targets(g, instances, fg, at, pixel_weight)
            want = reference_harmonic_targets(g, instances, fg, at, pixel_weight)
            for key in want:
                assert got[key].dtype == want[key].dtype, key
                assert np.array_equal(got[key], want[key]), (key, at, pixel_weight)
    shifted = harmonic_targets(g, np.ones((h, w), int), None, origin)["embedding"]
    assert not np.array_equal(shifted, harmonic_targets(g, np.ones((h, w), int),
                                                        None)["embedding"])


@pytest.mark.parametrize("case", ["empty", "full", "one", "many"])
def test_harmonic_targets_edge_cases_equal_the_reference(case):
    rng = np.random.default_rng(5)
    labels = {"empty": np.zeros((30, 31), int), "full": rng.integers(1, 4, (30, 31)),
              "one": np.pad(np.ones((10, 10), int), 10),
              "many": rng.integers(0, 300, (30, 31))}[case]
    for fg in (None, labels > 0):
        got = harmonic_targets(_guides(), labels, fg)
        want = reference_harmonic_targets(_guides(), labels, fg)
        for key in want:
            assert np.array_equal(got[key], want[key]), key


def test_guide_maps_cache_follows_the_guides():
    g = _guides()
    a = harmonic_targets(g, np.ones((10, 12), int), None)["embedding"]
    g2 = Guides(g.params + 1.0, g.ref_height, g.ref_width)
    b = harmonic_targets(g2, np.ones((10, 12), int), None)["embedding"]
    assert not np.array_equal(a, b)
    assert np.array_equal(b, reference_harmonic_targets(g2, np.ones((10, 12), int),
                                                        None)["embedding"])


def test_guide_maps_at_any_origin_are_the_guides_maps_bit_for_bit(monkeypatch):
    """Windows read from the kept guide plane, as it grows (the part it had is copied,
    the new strips evaluated), and windows that get a plane of their own (negative or
    fractional origins, beyond the size limit) all hold guides.maps' values exactly."""
    from benchbio.methods import harmonic

    g = _guides(n=5)
    windows = [((0, 0), 9, 13), ((3, 70), 20, 11), ((90, 2), 30, 40), ((0, 0), 9, 13),
               ((64, 64), 64, 64), ((200, 150), 7, 70), ((5, 6), 1, 1), ((-3, 4), 10, 12),
               ((2.5, 0), 6, 8), ((17, 0.25), 5, 5)]
    for origin, h, w in windows:
        got = harmonic.guide_maps(g, h, w, origin)
        want = g.maps(h, w, origin).astype(np.float32)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, want), (origin, h, w)
    plane = harmonic.guide_plane(g, (0, 0), 1, 1)
    assert (plane.height, plane.width) == (256, 256)  # grown in steps of 64, kept
    assert not plane.by_pixel.flags.writeable
    assert "_plane" in vars(g) and "_plane" not in vars(copy.deepcopy(g))
    assert len(pickle.dumps(g)) < 2000  # the kept plane (7 MB here) is not pickled
    monkeypatch.setattr(harmonic, "PLANE_MAX_BYTES", 256 * 256 * 5 * 12)
    far = harmonic.guide_plane(g, (300, 0), 10, 10)  # beyond the limit: its own plane
    assert (far.top, far.left, far.height, far.width) == (300, 0, 10, 10)
    assert harmonic.guide_plane(g, (1, 1), 10, 10) is plane
    assert np.array_equal(harmonic.guide_maps(g, 10, 10, (300, 0)),
                          g.maps(10, 10, (300, 0)).astype(np.float32))
    g.params[0, 2] += 0.5  # changed in place: a new plane for the new values
    assert np.array_equal(harmonic.guide_maps(g, 10, 10, (3, 4)),
                          g.maps(10, 10, (3, 4)).astype(np.float32))


def test_harmonic_targets_read_far_into_a_grown_plane_equal_the_reference():
    """Targets of crops at origins that make the kept plane grow, and of crops inside it
    afterwards, are the reference's (maps evaluated per crop) bit for bit."""
    rng = np.random.default_rng(17)
    g = _guides(n=7, size=90)
    for origin in [(0, 0), (130, 5), (7, 190), (60, 61), (250, 250), (1, 2)]:
        h, w = int(rng.integers(20, 70)), int(rng.integers(20, 70))
        labels = random_labels(rng, h, w, int(rng.integers(1, 12)), sparse=True)
        stack = random_stack(rng, h, w, 4)
        for instances in (labels, stack):
            got = harmonic_targets(g, instances, None, origin)
            want = reference_harmonic_targets(g, instances, None, origin)
            for key in want:
                assert np.array_equal(got[key], want[key]), (origin, key)


@pytest.mark.parametrize("name", ["discriminative", "embedseg"])
def test_owner_based_targets_equal_the_reference(name):
    method = benchbio.create_method(name)
    rng = np.random.default_rng(7)
    for _ in range(6):
        labels = random_labels(rng, 33, 41, 9, sparse=True)
        owner = reference_owner_map(labels)
        got = next(iter(method.targets(labels, None).values()))
        assert np.array_equal(got, owner.astype(np.int64))
    stack = random_stack(rng, 33, 41, 5)
    assert np.array_equal(owner_map(stack), reference_owner_map(stack))


def test_crop_dataset_batches_expand_to_the_reference_targets():
    """CropDataset items, collated (tables padded) and expanded as the loss does, are the
    reference augmentation's reference targets, bit for bit, and so is the loss."""
    rng = np.random.default_rng(11)
    samples = [Sample(f"s{i}", rng.random((1, 50, 45)).astype(np.float32),
                      random_labels(rng, 50, 45, 3 + 4 * i, sparse=True))
               for i in range(3)]
    method = benchbio.create_method("harmonic", n_guides=6)
    method.guides = _guides()
    crops = CropDataset(samples, method, 32, (0.8, 1.25), seed=5, use_fg=False)
    crops.epoch = 3
    items = [crops[i] for i in range(3)]
    assert len({item["table"].shape[0] for item in items}) > 1  # ragged: padding needed
    batch = collate_crops(items)
    dense = expand_targets({k: v for k, v in batch.items() if k != "image"})
    want = []
    for index in range(3):
        image, instances, _, origin = reference_augment(
            samples[index], 32, (0.8, 1.25), np.random.default_rng([5, 3, index]))
        want.append(reference_harmonic_targets(method.guides, instances, None, origin))
        assert torch.equal(batch["image"][index], torch.from_numpy(image))
        assert batch["origin"][index].tolist() == list(origin)
    for key in ("embedding", "weight"):
        expected = torch.from_numpy(np.stack([w[key] for w in want]))
        assert dense[key].dtype == expected.dtype and torch.equal(dense[key], expected)
    output = torch.randn(3, 6, 32, 32)
    dense_loss = method.loss(output, {k: torch.from_numpy(np.stack([w[k] for w in want]))
                                      for k in ("embedding", "weight")})
    assert torch.equal(method.loss(output, dense), dense_loss)
    assert torch.equal(method.loss(output, {k: v for k, v in batch.items() if k != "image"}),
                       dense_loss)


def test_collate_crops_pads_ragged_targets_with_zeros():
    items = [{"x": torch.ones(2, 3), "y": torch.tensor(1)},
             {"x": torch.full((4, 3), 2.0), "y": torch.tensor(2)}]
    batch = collate_crops(items)
    assert batch["x"].shape == (2, 4, 3) and batch["x"][0, 2:].abs().sum() == 0
    assert torch.equal(batch["x"][1], torch.full((4, 3), 2.0))
    assert batch["y"].tolist() == [1, 2]
    same = collate_crops([{"x": torch.ones(2)}, {"x": torch.zeros(2)}])["x"]
    assert same.tolist() == [[1, 1], [0, 0]]


@pytest.mark.slow
def test_bench_dataloader_runs_and_reports_every_asked_method(tmp_path):
    text = bench_dataloader_report(tmp_path, "harmonic", "embedseg")
    for row in ("| harmonic |", "| harmonic (before #17) |", "| embedseg |",
                "| embedseg (before #17) |"):
        assert row in text
    assert "Speed-up (samples per CPU-second)" in text
