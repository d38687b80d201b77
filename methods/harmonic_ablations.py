"""The paper's ablations of harmonic embeddings (section 4.5, Tables 4 and 5).

Each ablation is :class:`methods.harmonic.Harmonic` with exactly one default of its
options changed (a subclass whose ``Options`` dataclass overrides that one field), so the
resolved options, the logged run and the network differ from ``harmonic`` in that one
thing only:

=====================  ==============================  ======================================
name                   changed option                  paper row
=====================  ==============================  ======================================
harmonic-coordconv     ``position="coordconv"``        "CoordConv": x, y in [-1, 1]
harmonic-noguide       ``position="none"``             "No guide" / "Ours without SinConv"
harmonic-random        ``guides="random"``             "Random": frequencies U(0, 50)
harmonic-low           ``guides="low"``                "Low": frequencies U(0, 10)
harmonic-high          ``guides="high"``               "High": frequencies U(30, 50)
=====================  ==============================  ======================================

Frequencies are radians per reference extent (the median training-image size); the
ranges are ``methods.harmonic.GUIDE_RANGES``: "random" is the range the guide search
starts from; "low" gives at most ~1.6 periods per image (smooth guides that barely
separate neighbours); "high" at least ~4.8 periods (guides that repeat within an image,
so distant objects alias to the same embedding). Phases are uniform in [0, 2 pi).
The CoordConv and no-guide ablations keep the searched guides as targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchbio.methods.harmonic import Harmonic, HarmonicOptions
from benchbio.registry import register_method

__all__ = [
    "HarmonicCoordConv",
    "HarmonicNoGuide",
    "HarmonicRandom",
    "HarmonicLow",
    "HarmonicHigh",
]


@dataclass
class CoordConvOptions(HarmonicOptions):
    """Harmonic options with CoordConv decoder layers."""

    position: str = "coordconv"


@dataclass
class NoGuideOptions(HarmonicOptions):
    """Harmonic options with plain decoder convolutions."""

    position: str = "none"


@dataclass
class RandomOptions(HarmonicOptions):
    """Harmonic options with guides drawn from the whole frequency range, no search."""

    guides: str = "random"


@dataclass
class LowOptions(HarmonicOptions):
    """Harmonic options with low-frequency guides, no search."""

    guides: str = "low"


@dataclass
class HighOptions(HarmonicOptions):
    """Harmonic options with high-frequency guides, no search."""

    guides: str = "high"


class HarmonicCoordConv(Harmonic):
    """Harmonic targets, CoordConv (x, y) in place of SinConv."""

    name = "harmonic-coordconv"
    Options = CoordConvOptions


class HarmonicNoGuide(Harmonic):
    """Harmonic targets, plain convolutions."""

    name = "harmonic-noguide"
    Options = NoGuideOptions


class HarmonicRandom(Harmonic):
    """Harmonic with unsearched guides from the whole range."""

    name = "harmonic-random"
    Options = RandomOptions


class HarmonicLow(Harmonic):
    """Harmonic with unsearched low-frequency guides."""

    name = "harmonic-low"
    Options = LowOptions


class HarmonicHigh(Harmonic):
    """Harmonic with unsearched high-frequency guides."""

    name = "harmonic-high"
    Options = HighOptions


@register_method("harmonic-coordconv")
def harmonic_coordconv(**options) -> HarmonicCoordConv:
    """Ablation: harmonic targets with CoordConv (x, y in [-1, 1]) instead of SinConv."""
    return HarmonicCoordConv(**options)


@register_method("harmonic-noguide")
def harmonic_noguide(**options) -> HarmonicNoGuide:
    """Ablation: harmonic targets with plain convolutions (no guide maps in the net)."""
    return HarmonicNoGuide(**options)


@register_method("harmonic-random")
def harmonic_random(**options) -> HarmonicRandom:
    """Ablation: guides drawn uniformly from frequencies 0-50, without search."""
    return HarmonicRandom(**options)


@register_method("harmonic-low")
def harmonic_low(**options) -> HarmonicLow:
    """Ablation: low-frequency guides (0-10) drawn without search."""
    return HarmonicLow(**options)


@register_method("harmonic-high")
def harmonic_high(**options) -> HarmonicHigh:
    """Ablation: high-frequency guides (30-50) drawn without search."""
    return HarmonicHigh(**options)
