"""Networks: the paper's U-Net, with decoder convolutions that see position maps.

The paper (section 3.2, Figure 3) feeds the guide functions into the first convolution
of each decoder block ("SinConv"); CoordConv feeds x and y instead; plain convolutions
feed nothing. All three are one :class:`UNet` with a different ``position`` module, so
ablations differ in exactly that one thing.

The encoder is either the paper's plain U-Net encoder (``"unet"``, channels w, 2w, 4w,
8w, 8w, double 3x3 conv-BN-ReLU) or any segmentation-models-pytorch encoder, built
offline without pretrained weights unless a local weights file is given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BenchbioError

__all__ = ["PositionMaps", "CoordMaps", "AugmentedConv", "UNet", "build_unet", "pixel_centres",
           "divisor_of", "pad_to_divisor", "position_origins", "DECODERS"]

#: Decoder widths of the plain U-Net, from the deepest block up, for first-level width w:
#: "mirror" mirrors the encoder (8w, 4w, 2w, w); "authors" is the authors'
#: ``models/unet.py`` (4w, 2w, w, w: 256-128-64-64 at w = 64).
DECODERS = {"mirror": (8, 4, 2, 1), "authors": (4, 2, 1, 1)}


def divisor_of(model: nn.Module) -> int:
    """Input sides must be multiples of this: the network's total downsampling (32 for a
    model that does not say)."""
    return int(getattr(model, "divisor", 32))


def pad_to_divisor(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Pad ``(..., H, W)`` at the bottom and right to multiples of ``divisor``: by
    reflection where the image is large enough, else with zeros. Crop the output back."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if not (ph or pw):
        return x
    mode = "reflect" if min(h, w) > max(ph, pw) else "constant"
    batched = x if x.ndim == 4 else x[None]
    padded = F.pad(batched, (0, pw, 0, ph), mode=mode)
    return padded if x.ndim == 4 else padded[0]


def pixel_centres(size: int, stride: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Full-resolution pixel coordinates of the centres of a feature map's cells.

    Cell ``i`` of a map downsampled by ``stride`` covers input pixels
    ``[i*stride, (i+1)*stride)``, whose centre is ``(i + 0.5) * stride - 0.5``. This is the
    paper's ``x * Delta_L`` with the half-pixel alignment that keeps maps of every layer
    aligned with the output.
    """
    return (torch.arange(size, device=device, dtype=dtype) + 0.5) * stride - 0.5


class PositionMaps(nn.Module):
    """Maps of position that are concatenated to a convolution's input."""

    channels: int = 0
    #: ``(B, 2)`` whole-image (row, col) of each batch item's top-left pixel, or None for
    #: (0, 0). Tiled inference (:mod:`benchbio.inference`) sets it so that a tile sees the
    #: maps of its true position in the image, as whole-image prediction would.
    origins: torch.Tensor | None = None

    def centres(
        self, height: int, width: int, stride: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell-centre rows ``(1 or B, height)`` and columns ``(1 or B, width)`` in
        whole-image pixels (:func:`pixel_centres` shifted by :attr:`origins`)."""
        ys = pixel_centres(height, stride, like.device)[None]
        xs = pixel_centres(width, stride, like.device)[None]
        if self.origins is not None:
            origins = self.origins.to(like.device, torch.float32)
            ys, xs = ys + origins[:, :1], xs + origins[:, 1:]
        return ys, xs

    def forward(self, height: int, width: int, stride: int, like: torch.Tensor) -> torch.Tensor:
        """``(channels, height, width)`` maps for a feature map downsampled by ``stride``;
        ``(B, channels, height, width)`` when :attr:`origins` is set."""
        raise NotImplementedError


@contextlib.contextmanager
def position_origins(
    model: nn.Module, origins: torch.Tensor | Sequence[Sequence[float]] | None
) -> Iterator[None]:
    """Within the block, every position-map module of ``model`` places batch item ``i``
    at whole-image pixel ``origins[i]`` (row, col): a tile of tiled inference, or a
    training crop at its position in its (augmented) image. Models without position
    maps are unaffected."""
    if origins is not None and not isinstance(origins, torch.Tensor):
        origins = torch.as_tensor(origins, dtype=torch.float32)
    modules = [m for m in model.modules() if isinstance(m, PositionMaps)]
    saved = [m.origins for m in modules]
    for m in modules:
        m.origins = origins
    try:
        yield
    finally:
        for m, old in zip(modules, saved):
            m.origins = old


class CoordMaps(PositionMaps):
    """CoordConv (Liu et al. 2018): x and y scaled to [-1, 1] over a reference extent.

    The extent is the training crop size, so that the same pixel offset gives the same
    value at training and test time (a larger test image extends beyond +-1).
    """

    channels = 2

    def __init__(self, ref_height: int, ref_width: int) -> None:
        super().__init__()
        self.ref_height, self.ref_width = ref_height, ref_width

    def forward(self, height: int, width: int, stride: int, like: torch.Tensor) -> torch.Tensor:
        ys, xs = self.centres(height, width, stride, like)
        ys = ys / max(self.ref_height - 1, 1) * 2 - 1
        xs = xs / max(self.ref_width - 1, 1) * 2 - 1
        grid_y = ys[:, :, None].expand(-1, -1, width)
        grid_x = xs[:, None, :].expand(-1, height, -1)
        maps = torch.stack([grid_x, grid_y], 1).to(like.dtype)
        return maps if self.origins is not None else maps[0]


class AugmentedConv(nn.Module):
    """A convolution whose input is augmented with position maps (SinConv/CoordConv)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        position: PositionMaps | None,
        stride: int,
        norm: bool = True,
    ) -> None:
        super().__init__()
        self.position = position
        self.stride = stride
        extra = position.channels if position is not None else 0
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels + extra, out_channels, kernel_size, padding=kernel_size // 2)
        ]
        if norm:
            layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.position is not None:
            maps = self.position(x.shape[-2], x.shape[-1], self.stride, x)
            maps = maps if maps.dim() == 4 else maps.unsqueeze(0)
            x = torch.cat([x, maps.expand(x.shape[0], -1, -1, -1)], dim=1)
        return self.conv(x)


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class PlainEncoder(nn.Module):
    """The paper's U-Net encoder: double conv per level, 2x2 max-pool between levels."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList(_double_conv(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.out_channels = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.blocks):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            features.append(x)
        return features


class SmpEncoder(nn.Module):
    """A segmentation-models-pytorch encoder (features at strides 2..32, plus the input)."""

    def __init__(self, name: str, in_channels: int, weights: str | None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        try:
            self.encoder = smp.encoders.get_encoder(name, in_channels=in_channels, weights=None)
        except (KeyError, ValueError) as exc:
            raise BenchbioError(
                f"unknown encoder {name!r} ({exc}); use 'unet' or a segmentation-models-pytorch "
                "encoder name such as 'resnet34' or 'tu-resnet18'"
            ) from None
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self.encoder.load_state_dict(state, strict=False)
        self.out_channels = list(self.encoder.out_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.encoder(x))


class UNet(nn.Module):
    """Encoder, then decoder blocks (upsample x2, concat skip, augmented conv, double conv),
    then an augmented conv and a 1x1 head, as in the authors' ``models/unet.py``."""

    def __init__(
        self,
        encoder: nn.Module,
        out_channels: int,
        decoder_channels: tuple[int, ...],
        position: PositionMaps | None = None,
        kernel_size: int = 7,
        position_norm: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        enc = encoder.out_channels
        n_up = len(enc) - 1
        if len(decoder_channels) != n_up:
            raise ValueError("need one decoder width per upsampling step")
        self.divisor = 2**n_up
        self.blocks = nn.ModuleList()
        self.augmented = nn.ModuleList()
        prev = enc[-1]
        for i in range(n_up):
            skip = enc[-2 - i]
            stride = 2 ** (n_up - 1 - i)
            out = decoder_channels[i]
            self.augmented.append(AugmentedConv(prev + skip, out, kernel_size, position, stride,
                                                norm=position_norm))
            self.blocks.append(_double_conv(out, out))
            prev = out
        self.head_conv = AugmentedConv(prev, prev, kernel_size, position, 1, norm=position_norm)
        self.head = nn.Conv2d(prev, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(f"input {h}x{w} must be divisible by {self.divisor}; pad it first")
        features = self.encoder(x)
        y = features[-1]
        for i, (aug, block) in enumerate(zip(self.augmented, self.blocks)):
            skip = features[-2 - i]
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(aug(torch.cat([y, skip], dim=1)))
        return self.head(self.head_conv(y))


def build_unet(
    in_channels: int,
    out_channels: int,
    *,
    encoder: str = "unet",
    width: int = 64,
    position: PositionMaps | None = None,
    encoder_weights: str | None = None,
    kernel_size: int = 7,
    decoder: str = "mirror",
    position_norm: bool = True,
) -> UNet:
    """The paper's U-Net (``encoder="unet"``) or a U-Net decoder on an smp encoder.

    ``width`` sets the plain encoder's first level (64 in the paper); the decoder widths
    are :data:`DECODERS` ``[decoder]`` times ``width`` (plain encoder only). For smp
    encoders the decoder uses widths 256, 128, 64, 32, 16 scaled by ``width / 64``.
    ``position_norm``: BatchNorm and ReLU after each position-augmented convolution
    (benchbio's default), or a bare convolution (the authors' SinConv).
    """
    if decoder not in DECODERS:
        raise BenchbioError(f"decoder={decoder!r}: use {' or '.join(DECODERS)}")
    if encoder == "unet":
        widths = (width, 2 * width, 4 * width, 8 * width, 8 * width)
        enc: nn.Module = PlainEncoder(in_channels, widths)
        decoder_widths = tuple(f * width for f in DECODERS[decoder])
    else:
        if decoder != "mirror":
            raise BenchbioError(f"decoder={decoder!r} is for the plain U-Net encoder; "
                                "use decoder=mirror with an smp encoder")
        enc = SmpEncoder(encoder, in_channels, encoder_weights)
        scale = width / 64
        decoder_widths = tuple(max(8, int(c * scale)) for c in (256, 128, 64, 32, 16))
        decoder_widths = decoder_widths[: len(enc.out_channels) - 1]
    return UNet(enc, out_channels, decoder_widths, position=position, kernel_size=kernel_size,
                position_norm=position_norm)
