"""The paper's ablations of harmonic embeddings (section 4.5, Tables 4 and 5).

Each ablation is :class:`methods.harmonic.Harmonic` with exactly one default of its
options changed, declared in one line by :func:`benchbio.method.register_variant`, so
the resolved options, the logged run and the network differ from ``harmonic`` in that
one thing only:

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

from benchbio.method import register_variant
from benchbio.methods.harmonic import Harmonic

register_variant("harmonic-coordconv", Harmonic, "Ablation: harmonic targets with CoordConv "
                 "(x, y in [-1, 1]) instead of SinConv.", position="coordconv")
register_variant("harmonic-noguide", Harmonic, "Ablation: harmonic targets with plain "
                 "convolutions (no guide maps in the net).", position="none")
register_variant("harmonic-random", Harmonic, "Ablation: guides drawn uniformly from "
                 "frequencies 0-50, without search.", guides="random")
register_variant("harmonic-low", Harmonic, "Ablation: low-frequency guides (0-10) drawn "
                 "without search.", guides="low")
register_variant("harmonic-high", Harmonic, "Ablation: high-frequency guides (30-50) drawn "
                 "without search.", guides="high")
