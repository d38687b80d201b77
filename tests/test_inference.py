"""Tiled prediction, position origins and flip test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import benchbio
from benchbio.errors import BenchbioError
from benchbio.guides import GuideMaps, Guides
from benchbio.inference import (
    Predictor,
    forward_tiled,
    position_origins,
    predict_image,
    window_starts,
)
from benchbio.nets import CoordMaps, PlainEncoder, UNet, divisor_of, pad_to_divisor

CPU = torch.device("cpu")


def _guides(n=4) -> Guides:
    rng = np.random.default_rng(0)
    params = np.c_[rng.uniform(-20, 20, (n, 2)), rng.uniform(0, np.pi, n)]
    return Guides(params, 64.0, 64.0)


def _small_unet(position, out_channels=3, seed=0) -> UNet:
    """A 3-level U-Net (divisor 4) whose receptive field is a few dozen pixels, so that
    an overlap covering it makes tiled and whole-image outputs equal."""
    torch.manual_seed(seed)
    net = UNet(PlainEncoder(1, (4, 8, 8)), out_channels, (8, 4), position=position,
               kernel_size=3)
    return net.eval()


def _blobs(h=120, w=104, n=9, seed=0) -> np.ndarray:
    """A label image of ``n`` large discs (some cross any 40-pixel tile grid) on background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), np.int64)
    for k in range(1, n + 1):
        cy, cx, r = rng.uniform(10, h - 10), rng.uniform(10, w - 10), rng.uniform(9, 16)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = k
    return benchbio.instances.relabel(labels)


def test_window_starts_cover_the_image_on_the_divisor_grid():
    assert window_starts(64, 64, 16, 8) == [0]
    starts = window_starts(200, 64, 24, 8)
    assert all(s % 8 == 0 for s in starts)
    assert starts[0] == 0 and starts[-1] == 200 - 64
    assert all(a + 64 - b >= 24 for a, b in zip(starts[:-1], starts[1:]))


@pytest.mark.parametrize("position", ["sinconv", "coordconv", "none"])
def test_tiled_network_output_equals_whole_image_output(position):
    maps = {"sinconv": GuideMaps(_guides()), "coordconv": CoordMaps(64, 64), "none": None}
    net = _small_unet(maps[position])
    image = np.random.default_rng(1).random((1, 118, 101)).astype(np.float32)  # padded
    whole = forward_tiled(net, image, CPU, tile=512)
    tiled = forward_tiled(net, image, CPU, tile=80, overlap=48, batch_size=3)
    assert whole.shape == tiled.shape == (3, 118, 101)
    assert torch.allclose(whole, tiled, atol=1e-4)
    if position != "none":
        # the origins matter: without them every tile would see the maps of (0, 0)
        with position_origins(net, None):
            blind = _tiles_without_origins(net, image)
        assert not torch.allclose(whole[:, 24:48, 24:48], blind[:, 24:48, 24:48], atol=1e-2)


@pytest.mark.parametrize("position", ["sinconv", "coordconv", "none"])
def test_one_window_equals_the_plain_whole_image_forward_bit_for_bit(position):
    """Validation and test during training use ``tile=None``: for any image size the same
    numbers as the network on the padded whole image, so training figures do not move."""
    maps = {"sinconv": GuideMaps(_guides()), "coordconv": CoordMaps(64, 64), "none": None}
    net = _small_unet(maps[position])
    image = np.random.default_rng(2).random((1, 118, 101)).astype(np.float32)
    with torch.no_grad():
        plain = net(pad_to_divisor(torch.from_numpy(image)[None], divisor_of(net)))[0]
    one_window = forward_tiled(net, image, CPU, tile=None, overlap=0)
    assert torch.equal(one_window, plain[:, :118, :101])
    assert not torch.equal(forward_tiled(net, image, CPU, tile=48, overlap=8), one_window)


def _tiles_without_origins(net, image):
    """The 48x48 window at (24, 24) predicted as if it were a whole image."""
    x = torch.from_numpy(image[:, 24:72, 24:72].copy())[None]
    out = torch.zeros(3, *image.shape[1:])
    out[:, 24:72, 24:72] = net(x)[0]
    return out


class _Oracle(torch.nn.Module):
    """A 'network' whose output is its input: the image holds the ideal output."""

    divisor = 8

    def forward(self, x):
        return x.clone()


def _ideal_harmonic(labels):
    """Per-instance embedding vectors far apart (background one more vector)."""
    rng = np.random.default_rng(2)
    table = rng.normal(0, 3, (labels.max() + 1, 6)).astype(np.float32)
    return table[labels].transpose(2, 0, 1).copy()


def _ideal_embedseg(labels, pixel_scale=1023.0):
    """Offsets to the centroid (pre-tanh), sigma 1, seed logits +-6."""
    h, w = labels.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    out = np.zeros((5, h, w), np.float32)
    out[2:4] = 1.0
    out[4] = -6.0
    for k in range(1, labels.max() + 1):
        m = labels == k
        out[0][m] = np.arctanh((xx[m].mean() - xx[m]) / pixel_scale)
        out[1][m] = np.arctanh((yy[m].mean() - yy[m]) / pixel_scale)
        out[4][m] = 6.0
    return out


@pytest.mark.parametrize("name", ["harmonic", "embedseg"])
def test_tiled_prediction_equals_whole_image_prediction(name):
    labels = _blobs()
    method = benchbio.create_method(name)
    image = _ideal_harmonic(labels) if name == "harmonic" else _ideal_embedseg(labels)
    predictor = Predictor(method, _Oracle(), CPU, in_channels=len(image), min_area=5)
    whole = predict_image(predictor, image, tile=1024).labels
    tiled = predict_image(predictor, image, tile=40, overlap=16, batch_size=5).labels
    # every instance of the truth crosses into more than one tile for some of them
    assert any(len({(y // 40, x // 40) for y, x in np.argwhere(labels == k)}) > 1
               for k in range(1, labels.max() + 1))
    assert whole.max() == tiled.max() == labels.max()
    assert adjusted_rand_score(labels.ravel(), whole.ravel()) == 1.0
    assert adjusted_rand_score(whole.ravel(), tiled.ravel()) == 1.0


def test_embedseg_unflip_maps_the_flipped_ideal_output_back():
    labels = _blobs(64, 72, n=4)
    method = benchbio.create_method("embedseg")
    ideal = torch.from_numpy(_ideal_embedseg(labels))
    flipped_ideal = torch.from_numpy(_ideal_embedseg(np.ascontiguousarray(labels[:, ::-1])))
    assert torch.allclose(method.unflip(flipped_ideal, (-1,)), ideal, atol=1e-5)
    # a network that segments perfectly whatever the orientation: TTA must keep that
    predictor = Predictor(method, _LabelOracle(), CPU, in_channels=1, min_area=5)
    image = labels[None].astype(np.float32)  # 64 x 72: no padding
    plain = predict_image(predictor, image).labels
    tta = predict_image(predictor, image, flip=True).labels
    assert adjusted_rand_score(labels.ravel(), plain.ravel()) == 1.0
    assert adjusted_rand_score(labels.ravel(), tta.ravel()) == 1.0
    # without the sign change of the x offset, TTA would pull instances apart
    method.unflip = lambda output, dims: output.flip(dims)
    assert adjusted_rand_score(labels.ravel(), predict_image(predictor, image, flip=True)
                               .labels.ravel()) < 1.0


class _LabelOracle(torch.nn.Module):
    """Input: a label image; output: the ideal EmbedSeg output for it."""

    divisor = 8

    def forward(self, x):
        return torch.stack([torch.from_numpy(_ideal_embedseg(img[0].round().long().numpy()))
                            for img in x])


def test_flip_tta_is_refused_where_outputs_encode_position():
    method = benchbio.create_method("harmonic")
    predictor = Predictor(method, _Oracle(), CPU, in_channels=6)
    with pytest.raises(BenchbioError, match="flip"):
        predict_image(predictor, _ideal_harmonic(_blobs(40, 40, n=2)), flip=True)
