"""PatchPerPix (Mais, Hirsch & Kainmueller, ECCV 2020): a shape patch per pixel, assembled.

At every pixel the network predicts a ``k x k`` patch: for each pixel of the window
centred on it, the probability that it belongs to the same instance as the centre
(``patch_size`` k, channel ``(dy + r) * k + (dx + r)`` for offset (dy, dx), r = k // 2).
A second head predicts foreground (1 channel, sigmoid) or, where the dataset's instances
overlap (mask stacks), the number of instances at the pixel, 0 .. ``max_num_inst``
(softmax), as in the reference's BBBC010 setup.

Loss (the reference's ``setup10``): sigmoid cross-entropy of the patch channels at pixels
owned by exactly one instance, summed over the patch and divided by the patch size k^2,
averaged over those pixels; plus the cross-entropy of the count (or the binary
cross-entropy of foreground) over all pixels. The reference draws half of its training
crops around overlaps and half anywhere on the foreground; benchbio's one training loop
draws crops uniformly, so the method weights pixels instead: ``overlap_share`` (0.5) of
the patch loss is the mean over pixels within ``overlap_max_dist`` (15) of an overlap,
the rest the mean over all single-instance pixels (all of it when a crop has no overlap).
Patch offsets that fall outside the crop are unknown, not background, and are ignored.

Decoding (the reference's ``vote_instances``) in PyTorch and SciPy, on the CPU:

1. consensus: the affinity of two pixels x, y is the mean, over the foreground patches
   that contain both, of ``+f(a b)`` where both patch values exceed ``patch_threshold``
   (the reference's normalised product ``f(z) = (z - t^2) / (1 - t^2)``) and
   ``-f(a (1 - b))`` where only one does; pixels in predicted overlaps, and patches
   centred on them, take no part;
2. ranking: a patch's score is the mean of ``+A(x, y)`` over its pairs of "on" pixels and
   ``-A(x, y)`` over its on/off pairs;
3. greedy cover: ranked patches (centres outside overlaps) are taken while they cover
   foreground not yet covered by an earlier patch's pixels above ``fc_threshold``, in
   passes that first ask for much new foreground, then less (the reference's 500, 100,
   50, 10, 0 pixels of a 41 x 41 patch, as shares of the patch);
4. patch graph: selected patches closer than 4 r, and each patch with
   itself, are joined by the mean consensus over pairs of their pixels (pairs inside both
   patches weighted ``intersection_share``, the reference's 20 % sample);
5. connected components of the positive edges (``scipy.sparse.csgraph``) are instances,
   painted where their patches exceed ``patch_threshold``: a pixel may belong to two;
   a predicted overlap pixel also joins each instance that the patch of one of its own
   pixels nearby claims it for.

The reference holds the consensus as a dense ``(2k)^2 x H x W`` array (10 GB for k = 41
on a 520 x 696 image). Here it is never stored: each affinity that ranking and graph ask
for is estimated from ``consensus_samples`` patches drawn uniformly among those that
contain both pixels, plus the patches being compared; each patch is ranked on
``rank_pairs`` sampled pixel pairs, each graph edge on ``graph_pairs``. Draws come from a
generator seeded with ``decode_seed``, so a decode is reproducible.

On mask-stack datasets :meth:`PatchPerPix.postprocess` returns a
:class:`~benchbio.instances.Prediction` of a ``(K, H, W)`` mask stack, elsewhere of a
label image (the most confident instance wins a shared pixel). Each instance's confidence
is the mean rank score of its patches mapped from [-1, 1] to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from benchbio.cluster import remove_small
from benchbio.datasets.synthetic import OVERLAPS_CHECK
from benchbio.errors import BenchbioError
from benchbio.instances import Prediction, is_stack, owner_map, to_stack
from benchbio.method import Method, MethodOptions, saturated_logit
from benchbio.nets import build_unet
from benchbio.registry import register_method

__all__ = [
    "IGNORE",
    "PatchPerPixOptions",
    "PatchPerPix",
    "patch_targets",
    "device_patch_targets",
    "patchperpix_loss",
    "assemble",
]

IGNORE = 2
"""Patch target value of offsets outside the crop (unknown; the loss skips them)."""


@dataclass
class PatchPerPixOptions(MethodOptions):
    """Options of PatchPerPix (defaults: the reference's BBBC010 setup).

    Attributes:
        patch_size: side k of the square shape patch (odd; reference 41 at BBBC010
            resolution; 9-15 on the 128-pixel synthetic sets).
        head: "count" (instances per pixel, softmax over 0..max_num_inst), "fg"
            (foreground, sigmoid) or "auto": count where the training data are mask
            stacks, fg for label images.
        max_num_inst: largest instance count the count head predicts (reference: 2).
        overlap_share: weight of pixels near overlaps in the patch loss (the reference
            samples half its crops around overlaps).
        overlap_max_dist: "near an overlap" = within this many pixels (reference: 15).
        patch_threshold: a patch value above this is "same instance" (consensus, ranking,
            graph, painting; reference 0.9).
        fc_threshold: patch value above which a patch covers a pixel in the greedy
            foreground cover (reference 0.5).
        fg_thresh: foreground = P(fg) (or P(count >= 1)) above this when the protocol
            gives no mask (reference 0.5).
        rank_pairs: pixel pairs sampled per patch for its rank score.
        consensus_samples: patches sampled per pixel pair for its consensus affinity.
        graph_pairs: pixel pairs sampled per edge of the patch graph.
        intersection_share: weight of pixel pairs inside both patches of an edge
            (reference: 20 % of them sampled).
        decode_seed: seed of the decode's sampling.
        kernel_size: first convolution of each decoder block (as the other methods: 7).
    """

    patch_size: int = 41
    head: Literal["auto", "fg", "count"] = "auto"
    max_num_inst: int = 2
    overlap_share: float = 0.5
    overlap_max_dist: int = 15
    patch_threshold: float = 0.9
    fc_threshold: float = 0.5
    fg_thresh: float = 0.5
    rank_pairs: int = 64
    consensus_samples: int = 16
    graph_pairs: int = 256
    intersection_share: float = 0.2
    decode_seed: int = 0
    kernel_size: int = 7

    def __post_init__(self) -> None:
        if self.patch_size < 3 or self.patch_size % 2 == 0:
            raise BenchbioError(f"patch_size={self.patch_size}: use an odd size of 3 or more")
        if self.max_num_inst < 2:
            raise BenchbioError(f"max_num_inst={self.max_num_inst}: use 2 or more")
        for name in ("patch_threshold", "fc_threshold", "fg_thresh", "overlap_share",
                     "intersection_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise BenchbioError(f"{name}={getattr(self, name)} must be in [0, 1]")
        for name in ("rank_pairs", "consensus_samples", "graph_pairs"):
            if getattr(self, name) < 1:
                raise BenchbioError(f"{name}={getattr(self, name)} must be at least 1")


# ---------------------------------------------------------------------------- targets
def patch_targets(instances: np.ndarray, patch_size: int) -> np.ndarray:
    """``(k*k, H, W)`` uint8 patch targets of a label image or mask stack.

    Value 1 where the pixel at the offset belongs to the centre's instance, 0 where it
    does not (or the centre is not owned by exactly one instance), :data:`IGNORE` where
    the offset falls outside the image. A pixel in an overlap belongs to each of its
    instances.
    """
    k, r = patch_size, patch_size // 2
    owner = owner_map(instances)  # 0 bg, -1 overlap, 1..K
    h, w = owner.shape
    stack = to_stack(instances)
    pad_owner = np.pad(owner, r, constant_values=0)
    pad_inside = np.pad(np.ones((h, w), bool), r)
    pad_overlap = np.pad(owner < 0, r)
    pad_stack = np.pad(stack, ((0, 0), (r, r), (r, r))) if len(stack) else None
    single = owner > 0
    rows, cols = np.nonzero(single)
    out = np.zeros((k * k, h, w), np.uint8)
    for dy in range(k):
        for dx in range(k):
            win = (slice(dy, dy + h), slice(dx, dx + w))
            same = (pad_owner[win] == owner) & single
            if pad_stack is not None and pad_overlap[win].any():
                at = pad_overlap[win][rows, cols]  # centres whose neighbour is an overlap
                rr, cc = rows[at], cols[at]
                same[rr, cc] = pad_stack[owner[rr, cc] - 1, rr + dy, cc + dx]
            target = same.astype(np.uint8)
            target[~pad_inside[win]] = IGNORE
            out[dy * k + dx] = target
    return out


def device_patch_targets(
    owner: torch.Tensor, members: torch.Tensor, patch_size: int, chunk: int = 1024
) -> torch.Tensor:
    """:func:`patch_targets` of a whole batch, built where the batch is (e.g. the GPU).

    ``owner``: ``(B, H, W)`` owner maps (:func:`~benchbio.instances.owner_map`: 0
    background, -1 overlap, 1..K the one owner); ``members``: ``(B, K, H, W)`` bool
    masks of the crops' instances in the order the owner ids count them, read only at
    overlap pixels, so ``K`` may be 0 for a crop without overlaps (collation pads with
    empty masks). Returns ``(B, k*k, H, W)`` uint8, equal to :func:`patch_targets` of
    each crop.

    Vectorised: the windows of all offsets are one strided view of the padded owner map
    (``Tensor.unfold``, no copy), compared with the centres in one broadcast operation
    into the output's memory. Neighbours in an overlap are then looked up in the centre's
    own mask, ``chunk`` overlap pixels (times k*k offsets) at a time, so the extra memory
    is bounded whatever the crop size.
    """
    k, r = patch_size, patch_size // 2
    b, h, w = owner.shape
    # centres not owned by exactly one instance get -2, which no neighbour (>= -1) equals
    centre = torch.where(owner > 0, owner, -2)[:, None, None]  # (B, 1, 1, H, W)
    padded = F.pad(owner, (r, r, r, r))  # 0 outside: never an instance
    windows = padded.unfold(1, h, 1).unfold(2, w, 1)  # (B, k, k, H, W) view, no copy
    same = torch.empty((b, k, k, h, w), dtype=torch.bool, device=owner.device)
    torch.eq(windows, centre, out=same)  # exact wherever the neighbour has one owner
    if members.shape[1]:
        # a neighbour n in an overlap is "same" for centre c = n - offset where the mask
        # of c's one owner holds n
        ob, oy, ox = (owner < 0).nonzero(as_tuple=True)
        offsets = torch.arange(k * k, device=owner.device)
        dy, dx = offsets // k, offsets % k
        for start in range(0, len(ob), chunk):
            nb, ny, nx = (t[start:start + chunk, None] for t in (ob, oy, ox))
            cy, cx = ny - (dy - r), nx - (dx - r)  # (n, k*k)
            inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
            nb, ny, nx = (t.expand_as(cy)[inside] for t in (nb, ny, nx))
            cy, cx, d = cy[inside], cx[inside], offsets.expand(len(inside), -1)[inside]
            own = owner[nb, cy, cx].long()
            one = own > 0
            nb, ny, nx, cy, cx, d, own = (t[one] for t in (nb, ny, nx, cy, cx, d, own))
            same[nb, d // k, d % k, cy, cx] = members[nb, own - 1, ny, nx]
    out = same.view(torch.uint8)
    for d in range(k):  # offsets that fall outside the crop: a band along each border
        s = d - r
        if s < 0:
            out[:, d, :, :-s] = IGNORE
            out[:, :, d, :, :-s] = IGNORE
        elif s > 0:
            out[:, d, :, h - s:] = IGNORE
            out[:, :, d, :, w - s:] = IGNORE
    return out.reshape(b, k * k, h, w)


def near_overlap_mask(instances: np.ndarray, max_dist: float) -> np.ndarray:
    """Pixels owned by one instance within ``max_dist`` of a pixel in two or more."""
    return _near_overlap(owner_map(instances), max_dist)


def _near_overlap(owner: np.ndarray, max_dist: float) -> np.ndarray:
    overlap = owner < 0
    if not overlap.any():
        return np.zeros(owner.shape, bool)
    return (ndi.distance_transform_edt(~overlap) <= max_dist) & (owner > 0)


def patchperpix_loss(
    output: torch.Tensor,
    patch: torch.Tensor,
    count: torch.Tensor,
    near_overlap: torch.Tensor,
    *,
    patch_size: int,
    count_head: bool,
    max_num_inst: int = 2,
    overlap_share: float = 0.5,
) -> torch.Tensor:
    """The PatchPerPix loss of ``(B, k*k + heads, H, W)`` outputs (see the module doc).

    ``patch``: ``(B, k*k, H, W)`` uint8 targets (:func:`patch_targets`); ``count``:
    ``(B, H, W)`` instances per pixel; ``near_overlap``: ``(B, H, W)`` bool.
    """
    k2 = patch_size * patch_size
    logits = output[:, :k2].float()
    valid = patch != IGNORE
    bce = F.binary_cross_entropy_with_logits(logits, (patch == 1).float(), reduction="none")
    per_pixel = (bce * valid).sum(1) / k2  # normalised by the patch size
    single = (count == 1).float()
    weight = single / single.sum().clamp(min=1.0)
    near = near_overlap.float() * single
    if near.sum() > 0:
        weight = (1.0 - overlap_share) * weight + overlap_share * near / near.sum()
    loss_patch = (per_pixel * weight).sum()
    head = output[:, k2:].float()
    if count_head:
        loss_head = F.cross_entropy(head, count.long().clamp(0, max_num_inst))
    else:
        loss_head = F.binary_cross_entropy_with_logits(head[:, 0], (count > 0).float())
    return loss_patch + loss_head


# ---------------------------------------------------------------------------- decode
class _Patches:
    """The foreground's patches as probabilities, and lookups between pixels and patches."""

    def __init__(
        self, patch_logits: torch.Tensor, fg: np.ndarray, overlap: np.ndarray, chunk: int = 4096
    ) -> None:
        k2, h, w = patch_logits.shape
        self.k = int(round(k2**0.5))
        if self.k * self.k != k2 or self.k % 2 == 0:
            raise BenchbioError(f"{k2} patch channels: need k*k with k odd")
        self.r, self.h, self.w = self.k // 2, h, w
        self.fg = torch.from_numpy(np.ascontiguousarray(fg, bool).ravel())
        self.valid = self.fg & ~torch.from_numpy(np.ascontiguousarray(overlap, bool).ravel())
        self.fg_pixels = self.fg.nonzero().squeeze(1)
        self.row = torch.full((h * w,), -1, dtype=torch.long)
        self.row[self.fg_pixels] = torch.arange(len(self.fg_pixels))
        flat = patch_logits.reshape(k2, h * w)
        self.prob = torch.empty((len(self.fg_pixels), k2), dtype=torch.float32)
        for start in range(0, len(self.fg_pixels), chunk):  # never a full (k2, H*W) copy
            idx = self.fg_pixels[start:start + chunk]
            self.prob[start:start + chunk] = torch.sigmoid(flat[:, idx].float()).T
        offsets = torch.arange(k2)
        self.oy, self.ox = offsets // self.k - self.r, offsets % self.k - self.r

    def window(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, k*k)`` flat pixel index of each patch offset, and whether it is in the image."""
        py = (pixels // self.w)[:, None] + self.oy
        px = (pixels % self.w)[:, None] + self.ox
        inside = (py >= 0) & (py < self.h) & (px >= 0) & (px < self.w)
        return py.clamp(0, self.h - 1) * self.w + px.clamp(0, self.w - 1), inside

    def consensus(
        self, x: torch.Tensor, y: torch.Tensor, anchors: torch.Tensor, samples: int,
        threshold: float, gen: torch.Generator,
    ) -> torch.Tensor:
        """Consensus affinity of pixel pairs ``x``, ``y`` (flat indices, ``(M,)``).

        The votes of ``samples`` patches drawn uniformly among the centres whose window
        holds both pixels, and of the ``anchors`` ``(M, A)`` (centres, -1 for none), are
        averaged; 0 where no patch votes or a pixel is outside ``valid``.
        """
        m = len(x)
        if m == 0:
            return torch.zeros(0)
        r, w = self.r, self.w
        y1, x1, y2, x2 = x // w, x % w, y // w, y % w
        lo_y = (torch.maximum(y1, y2) - r).clamp(min=0)
        hi_y = (torch.minimum(y1, y2) + r).clamp(max=self.h - 1)
        lo_x = (torch.maximum(x1, x2) - r).clamp(min=0)
        hi_x = (torch.minimum(x1, x2) + r).clamp(max=self.w - 1)
        span_y = (hi_y - lo_y + 1).clamp(min=1)
        span_x = (hi_x - lo_x + 1).clamp(min=1)
        cy = lo_y[:, None] + (torch.rand(m, samples, generator=gen) * span_y[:, None]).long()
        cx = lo_x[:, None] + (torch.rand(m, samples, generator=gen) * span_x[:, None]).long()
        centres = torch.cat([cy * w + cx, anchors], dim=1)
        known = centres >= 0
        centres = centres.clamp(min=0)
        cy, cx = centres // w, centres % w
        row = self.row[centres]
        covers = (
            known & (row >= 0)
            & ((y1[:, None] - cy).abs() <= r) & ((x1[:, None] - cx).abs() <= r)
            & ((y2[:, None] - cy).abs() <= r) & ((x2[:, None] - cx).abs() <= r)
        )
        k = self.k
        off_a = ((y1[:, None] - cy + r) * k + (x1[:, None] - cx + r)).clamp(0, k * k - 1)
        off_b = ((y2[:, None] - cy + r) * k + (x2[:, None] - cx + r)).clamp(0, k * k - 1)
        row = row.clamp(min=0)
        a, b = self.prob[row, off_a], self.prob[row, off_b]
        t2 = threshold * threshold

        def norm(z: torch.Tensor) -> torch.Tensor:
            return (z - t2) / (1.0 - t2)

        a_on, b_on = a > threshold, b > threshold
        both = a_on & b_on
        only_a = a_on & (b < threshold)
        only_b = b_on & (a < threshold)
        vote = torch.where(both, norm(a * b), torch.zeros_like(a))
        vote = torch.where(only_a, -norm(a * (1 - b)), vote)
        vote = torch.where(only_b, -norm(b * (1 - a)), vote)
        counted = covers & (both | only_a | only_b)
        total = (vote * counted).sum(1)
        affinity = total / counted.sum(1).clamp(min=1)
        return torch.where(self.valid[x] & self.valid[y], affinity, torch.zeros_like(affinity))


def _sample_from(mask: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``(B, n)`` offsets drawn uniformly (with replacement) among each row's True ones;
    rows without any draw uniformly (the caller discards them)."""
    weights = mask.float()
    weights[~mask.any(1)] = 1.0
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def rank_patches(
    patches: _Patches, centres: torch.Tensor, *, threshold: float, pairs: int, samples: int,
    gen: torch.Generator, chunk: int = 512,
) -> torch.Tensor:
    """Rank score of each patch at ``centres``: mean of +A over on/on pairs (each once)
    and -A over on/off pairs of its pixels outside overlaps, on ``pairs`` sampled pairs."""
    scores = torch.zeros(len(centres))
    for start in range(0, len(centres), chunk):
        c = centres[start:start + chunk]
        pix, inside = patches.window(c)
        usable = patches.valid[pix] & inside
        p = patches.prob[patches.row[c]]
        on = (p > threshold) & usable
        o1, o2 = _sample_from(on, pairs, gen), _sample_from(usable, pairs, gen)
        v2 = p.gather(1, o2)
        on2, off2 = v2 > threshold, v2 < threshold
        keep = on.any(1, keepdim=True) & (o1 != o2) & (~on2 | (o2 > o1))
        sign = torch.where(on2, 1.0, torch.where(off2, -1.0, 0.0))
        x, y = pix.gather(1, o1)[keep], pix.gather(1, o2)[keep]
        anchors = c[:, None].expand_as(o1)[keep][:, None]
        acc = torch.zeros(o1.shape)
        acc[keep] = sign[keep] * patches.consensus(x, y, anchors, samples, threshold, gen)
        scores[start:start + chunk] = acc.sum(1) / keep.sum(1).clamp(min=1)
    return scores


COVER_PASSES = (0.3, 0.06, 0.03, 0.006, 0.0)
"""Shares of the patch area a patch must newly cover to be taken, pass by pass: the
reference's 500, 100, 50, 10, 0 pixels of a 41 x 41 patch."""


def foreground_cover(
    patches: _Patches, centres: np.ndarray, to_cover: np.ndarray, threshold: float,
    passes: tuple[float, ...] = COVER_PASSES,
) -> list[int]:
    """Greedy cover: indices into ``centres`` (in rank order) of the patches taken because
    their pixels above ``threshold`` reach foreground no earlier patch covered, more than
    ``share * k * k`` pixels of it in the pass of each ``share`` (the reference's passes
    of decreasing thresholds).

    """
    k, r, h, w = patches.k, patches.r, patches.h, patches.w
    covers = (patches.prob > threshold).numpy().reshape(-1, k, k)
    rows = patches.row.numpy()
    taken = np.zeros(len(centres), bool)

    def cover(uncovered: np.ndarray, least: int) -> None:
        remaining = int(uncovered.sum())
        for i, c in enumerate(centres):
            if remaining == 0:
                break
            if taken[i]:
                continue
            cy, cx = divmod(int(c), w)
            y0, y1 = max(cy - r, 0), min(cy + r + 1, h)
            x0, x1 = max(cx - r, 0), min(cx + r + 1, w)
            region = uncovered[y0:y1, x0:x1]
            hit = region & covers[rows[c]][y0 - cy + r:y1 - cy + r, x0 - cx + r:x1 - cx + r]
            n = int(np.count_nonzero(hit))
            if n > least:
                taken[i] = True
                region[hit] = False
                remaining -= n

    uncovered = np.ascontiguousarray(to_cover, bool).copy()
    for share in passes:
        cover(uncovered, int(share * k * k))
    return [int(i) for i in np.flatnonzero(taken)]


def patch_graph(
    patches: _Patches, centres: torch.Tensor, *, threshold: float, pairs: int, samples: int,
    intersection_share: float, gen: torch.Generator, chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``(i, j, weight)`` between selected patches (indices into ``centres``) closer
    than 4 r (so that some of their pixels are within a patch of each other), and of
    each patch with itself: the mean consensus over sampled
    pairs of their pixels above ``threshold`` (pairs within both patches weighted
    ``intersection_share``)."""
    r, w = patches.r, patches.w
    yx = np.stack([centres.numpy() // w, centres.numpy() % w], 1)
    near = cKDTree(yx).query_pairs(4 * r, p=np.inf, output_type="ndarray")
    selfs = np.repeat(np.arange(len(centres))[:, None], 2, 1)
    edges = np.concatenate([near.reshape(-1, 2), selfs]).astype(np.int64)
    weights = np.zeros(len(edges))
    for start in range(0, len(edges), chunk):
        e = torch.from_numpy(edges[start:start + chunk])
        a, b = centres[e[:, 0]], centres[e[:, 1]]
        sets = []
        for c in (a, b):
            pix, inside = patches.window(c)
            sets.append((pix, (patches.prob[patches.row[c]] > threshold)
                         & patches.fg[pix] & inside))
        (pix_a, set_a), (pix_b, set_b) = sets
        x = pix_a.gather(1, _sample_from(set_a, pairs, gen))
        y = pix_b.gather(1, _sample_from(set_b, pairs, gen))
        xy, xx, yy, yx_ = x // w, x % w, y // w, y % w
        ay, ax, by, bx = (a // w)[:, None], (a % w)[:, None], (b // w)[:, None], (b % w)[:, None]
        in_range = ((xy - yy).abs() <= 2 * r) & ((xx - yx_).abs() <= 2 * r) & (x != y)
        in_range &= set_a.any(1, keepdim=True) & set_b.any(1, keepdim=True)
        both = ((xy - by).abs() <= r) & ((xx - bx).abs() <= r) & ((yy - ay).abs() <= r) & (
            (yx_ - ax).abs() <= r)
        weight = torch.where(both, intersection_share, 1.0) * in_range
        anchors = torch.stack([a, b], 1)[:, None, :].expand(-1, pairs, -1)[in_range]
        aff = torch.zeros(x.shape)
        aff[in_range] = patches.consensus(x[in_range], y[in_range], anchors, samples,
                                          threshold, gen)
        weights[start:start + chunk] = ((aff * weight).sum(1)
                                        / weight.sum(1).clamp(min=1e-12)).numpy()
    return edges[:, 0], edges[:, 1], weights


def complete_overlaps(
    patches: _Patches, masks: np.ndarray, overlap: np.ndarray, threshold: float,
    chunk: int = 1024,
) -> np.ndarray:
    """Add each predicted overlap pixel to every instance that a patch centred on one of
    the instance's pixels outside overlaps claims it for (value above ``threshold``).

    The selected patches of an instance need not reach every overlap it runs through;
    the patches of its other pixels near the overlap do.
    """
    if not overlap.any() or len(masks) == 0:
        return masks
    r, h, w = patches.r, patches.h, patches.w
    reach = ndi.binary_dilation(overlap, np.ones((2 * r + 1, 2 * r + 1), bool))
    centres = torch.from_numpy(np.flatnonzero(reach.ravel()))
    centres = centres[patches.valid[centres]]
    if len(centres) == 0:
        return masks
    rows, cols = [], []
    for start in range(0, len(centres), chunk):
        pix, inside = patches.window(centres[start:start + chunk])
        claims = (patches.prob[patches.row[centres[start:start + chunk]]] > threshold) & inside
        claims &= torch.from_numpy(overlap.ravel())[pix]
        m, off = claims.nonzero(as_tuple=True)
        rows.append((m + start).numpy())
        cols.append(pix[m, off].numpy())
    rows_np, cols_np = np.concatenate(rows), np.concatenate(cols)
    claimed = sparse.csr_matrix((np.ones(len(rows_np)), (rows_np, cols_np)),
                                shape=(len(centres), h * w))
    owners = sparse.csr_matrix(masks.reshape(len(masks), -1)[:, centres.numpy()].astype(float))
    extra = (owners @ claimed).toarray().reshape(masks.shape) > 0
    return masks | extra


def assemble(
    patch_logits: torch.Tensor,
    fg: np.ndarray,
    overlap: np.ndarray | None = None,
    *,
    patch_threshold: float = 0.9,
    fc_threshold: float = 0.5,
    rank_pairs: int = 64,
    consensus_samples: int = 16,
    graph_pairs: int = 256,
    intersection_share: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Instances from ``(k*k, H, W)`` patch logits: ``(K, H, W)`` bool masks (they may
    overlap) and ``(K,)`` confidences in [0, 1], most confident first.

    ``fg`` is the foreground to cover; ``overlap`` the pixels predicted to hold two or
    more instances (excluded from the consensus and as patch centres).
    """
    h, w = fg.shape
    overlap = np.zeros_like(fg, bool) if overlap is None else np.asarray(overlap, bool) & fg
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        patches = _Patches(patch_logits.detach().cpu(), fg, overlap)
        candidates = patches.valid.nonzero().squeeze(1)
        if len(candidates) == 0:
            return np.zeros((0, h, w), bool), np.zeros(0)
        scores = rank_patches(patches, candidates, threshold=patch_threshold,
                              pairs=rank_pairs, samples=consensus_samples, gen=gen)
        order = torch.sort(-scores, stable=True).indices
        ranked = candidates[order]
        chosen = foreground_cover(patches, ranked.numpy(), fg, fc_threshold)
        selected, selected_scores = ranked[chosen], scores[order][chosen].numpy()
        if len(selected) == 0:
            return np.zeros((0, h, w), bool), np.zeros(0)
        i, j, weight = patch_graph(patches, selected, threshold=patch_threshold,
                                   pairs=graph_pairs, samples=consensus_samples,
                                   intersection_share=intersection_share, gen=gen)
    positive = weight > 0
    n = len(selected)
    graph = sparse.coo_matrix((np.ones(int(positive.sum())), (i[positive], j[positive])),
                              shape=(n, n))
    _, component = connected_components(graph, directed=False)
    in_graph = np.zeros(n, bool)
    in_graph[i[positive]] = in_graph[j[positive]] = True
    k, r = patches.k, patches.r
    paint = (patches.prob > patch_threshold).numpy().reshape(-1, k, k)
    rows = patches.row.numpy()
    masks, confidences = [], []
    for comp in np.unique(component[in_graph]):
        members = np.flatnonzero((component == comp) & in_graph)
        mask = np.zeros((h, w), bool)
        for m in members:
            cy, cx = divmod(int(selected[m]), w)
            y0, y1 = max(cy - r, 0), min(cy + r + 1, h)
            x0, x1 = max(cx - r, 0), min(cx + r + 1, w)
            mask[y0:y1, x0:x1] |= paint[rows[selected[m]]][y0 - cy + r:y1 - cy + r,
                                                          x0 - cx + r:x1 - cx + r]
        if mask.any():
            masks.append(mask)
            confidences.append(float(np.mean((np.clip(selected_scores[members], -1, 1) + 1) / 2)))
    if not masks:
        return np.zeros((0, h, w), bool), np.zeros(0)
    masks = complete_overlaps(patches, np.stack(masks), overlap, patch_threshold)
    order_np = np.argsort(-np.asarray(confidences), kind="stable")
    return masks[order_np], np.asarray(confidences)[order_np]


# ---------------------------------------------------------------------------- method
class PatchPerPix(Method):
    """Shape patches per pixel, assembled by consensus voting (PatchPerPix)."""

    name = "patchperpix"
    Options = PatchPerPixOptions
    #: Its output may overlap (mask stacks from the count head): one synthetic-worms
    #: image, COCO AP >= 0.9, with a patch that fits the 128-pixel image on a CPU; of
    #: patch 7 / 9 / 11 / 13 / 15 and lr 3e-3 / 5e-3 / 1e-2, 9 at 1e-2 cosine learned
    #: fastest. The decode caps small patches: its own perfect patches score AP 0.683 /
    #: 0.832 / 0.916 / 1.000 / 1.000 at patch 7 / 9 / 11 / 13 / 15 (the ceiling,
    #: results/bench/overfit.md).
    overfit = replace(
        OVERLAPS_CHECK, options={"width": 16, "kernel_size": 3, "patch_size": 9}, lr=1e-2,
        lr_schedule="cosine", steps=800, in_suite=False, cannot_pass=(
            "the network reaches the decode's ceiling, not the target: at patch 9 its best "
            "COCO AP is 0.82 in 800 steps (110 CPU s) where decoding its own perfect "
            "patches scores 0.832 (it splits the 10 worms into 13 instances); patch 7: 0.68 "
            "of 0.683. Patches whose ceiling is 1.0 learn too slowly "
            "for the budget: patch 13 0.57 in 650 steps (127 CPU s), 15 0.52; patch 11 "
            "(ceiling 0.916) 0.57"))

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.count_head = self.opts.head == "count"

    @property
    def patch_channels(self) -> int:
        return self.opts.patch_size**2

    @property
    def out_channels(self) -> int:
        return self.patch_channels + (self.opts.max_num_inst + 1 if self.count_head else 1)

    # --- fitted state: which head --------------------------------------------------
    def fit(self, train, *, seed: int, log=None) -> None:
        """With ``head="auto"``, a count head when the training instances are mask stacks."""
        if self.opts.head == "auto":
            self.count_head = any(is_stack(np.asarray(s.instances)) for s in train)

    def state(self) -> dict:
        return {"count_head": self.count_head}

    def load_state(self, state: dict) -> None:
        if "count_head" in state:
            self.count_head = bool(state["count_head"])

    # --- training ------------------------------------------------------------------
    def build_model(self, in_channels: int) -> torch.nn.Module:
        o = self.opts
        return build_unet(in_channels, self.out_channels, encoder=o.encoder, width=o.width,
                          encoder_weights=o.encoder_weights, kernel_size=o.kernel_size)

    def targets(
        self, instances: np.ndarray, fg: np.ndarray | None, origin: tuple[int, int] = (0, 0)
    ) -> dict[str, np.ndarray]:
        """What a loader worker ships: ``owner`` (int32 owner map), ``members`` (the mask
        stack where the crop has overlaps, else no masks), ``count`` instances per pixel
        and ``near_overlap``; :meth:`device_targets` expands them to the patches, whose
        ``k*k`` bytes per pixel (341 MB for a 448 x 448 crop, k = 41) are too many to
        build and ship per crop."""
        instances = np.asarray(instances)
        owner = owner_map(instances)
        h, w = owner.shape
        overlap = bool((owner < 0).any())  # only then are masks needed beside the owners
        if is_stack(instances):
            stack = to_stack(instances)
            count = stack.sum(0, dtype=np.int64) if len(stack) else np.zeros((h, w), np.int64)
            members = stack if overlap else np.zeros((0, h, w), bool)
        else:
            count, members = (owner > 0).astype(np.int64), np.zeros((0, h, w), bool)
        return {
            "owner": owner.astype(np.int32),
            "members": members,
            "count": count,
            "near_overlap": _near_overlap(owner, self.opts.overlap_max_dist),
        }

    def device_targets(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with ``patch`` ``(B, k*k, H, W)`` uint8 (:func:`device_patch_targets`)
        in place of ``owner`` and ``members``, built on the batch's device."""
        out = dict(batch)
        owner, members = out.pop("owner"), out.pop("members")
        out["patch"] = device_patch_targets(owner, members, self.opts.patch_size)
        return out

    def loss(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        o = self.opts
        return patchperpix_loss(
            output, targets["patch"], targets["count"], targets["near_overlap"],
            patch_size=o.patch_size, count_head=self.count_head,
            max_num_inst=o.max_num_inst, overlap_share=o.overlap_share,
        )

    def unflip(self, output: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """Flip back; a patch flips with the image (its offset axis along ``dims``)."""
        k, k2 = self.opts.patch_size, self.patch_channels
        out = output.flip(dims)
        h, w = out.shape[-2:]
        patch = out[:k2].reshape(k, k, h, w)
        axes = tuple(0 if d in (-2, output.dim() - 2) else 1 for d in dims)
        return torch.cat([patch.flip(axes).reshape(k2, h, w), out[k2:]])

    def ideal_output(self, instances: np.ndarray, fg: np.ndarray | None) -> torch.Tensor:
        """Saturated logits of the patch targets (offsets outside the image: "not the
        same instance") and of the count (one-hot over 0..max_num_inst) or foreground."""
        instances = np.asarray(instances)
        patches = saturated_logit(patch_targets(instances, self.opts.patch_size))
        count = torch.from_numpy(to_stack(instances).sum(0, dtype=np.int64))
        if self.count_head:
            levels = torch.arange(self.opts.max_num_inst + 1)[:, None, None]
            head = saturated_logit(count.clamp(max=self.opts.max_num_inst)[None] == levels)
        else:
            head = saturated_logit(count[None] > 0)
        return torch.cat([patches, head])

    # --- inference -----------------------------------------------------------------
    def foreground(
        self, output: torch.Tensor, fg: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Foreground (the protocol's mask, else the head above ``fg_thresh``) and the
        predicted overlaps (count >= 2; none without a count head)."""
        head = output[self.patch_channels:].float()
        if self.count_head:
            prob = torch.softmax(head, 0)
            fg_pred = (1.0 - prob[0]) > self.opts.fg_thresh
            overlap = (prob.argmax(0) >= 2).numpy()
        else:
            fg_pred = torch.sigmoid(head[0]) > self.opts.fg_thresh
            overlap = np.zeros(fg_pred.shape, bool)
        mask = fg_pred.numpy() if fg is None else np.asarray(fg, bool)
        return mask, overlap & mask

    def postprocess(
        self, output: torch.Tensor, fg: np.ndarray | None, min_area: int
    ) -> Prediction:
        """Instances and their confidences: a mask stack (keyed by mask index) with a count
        head, else (and when nothing is found, which a TIFF cannot hold as a stack of no
        pages) a label image."""
        o = self.opts
        output = output.detach().cpu()
        mask, overlap = self.foreground(output, fg)
        masks, conf = assemble(
            output[: self.patch_channels], mask, overlap, patch_threshold=o.patch_threshold,
            fc_threshold=o.fc_threshold, rank_pairs=o.rank_pairs,
            consensus_samples=o.consensus_samples, graph_pairs=o.graph_pairs,
            intersection_share=o.intersection_share, seed=o.decode_seed,
        )
        big = masks.sum((1, 2)) >= max(min_area, 1) if len(masks) else np.zeros(0, bool)
        masks, conf = masks[big], conf[big]
        if self.count_head and len(masks):
            return Prediction(masks, {i: float(c) for i, c in enumerate(conf)})
        labels = np.zeros(mask.shape, np.int64)
        for i in np.argsort(conf, kind="stable"):  # the most confident is painted last
            labels[masks[i]] = i + 1
        kept = remove_small(labels, min_area)
        scores = {}
        for new in range(1, int(kept.max(initial=0)) + 1):
            old = int(labels[kept == new][0])
            scores[new] = float(conf[old - 1])
        return Prediction(kept, scores)


@register_method("patchperpix")
def patchperpix(**options) -> PatchPerPix:
    """PatchPerPix (Mais et al. 2020): a shape patch per pixel, assembled by consensus."""
    return PatchPerPix(**options)
