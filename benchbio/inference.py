"""Applying a trained model to new images: loading, tiled prediction, flip TTA, files.

Loading. A ``best.pt`` checkpoint (a file, or the artifact ``checkpoint/best.pt`` of an
MLflow run) holds the method's name, options and fitted state (e.g. harmonic's guides)
and the network's weights; :func:`load_checkpoint` and :func:`load_run` rebuild both.

Tiling. The network runs on overlapping windows whose origins are multiples of its
divisor (so every pooling cell of a window is a cell of the whole image), each window
sees the position maps of its true place in the image (SinConv / CoordConv read
:attr:`benchbio.nets.PositionMaps.origins`), each pixel keeps the output of the window
in which it lies farthest from a border (overlaps are split in the middle), and the
method's post-processing runs once on the stitched output. Instances crossing tile
borders are therefore neither split nor duplicated, for every method, and when half the
overlap covers the network's receptive field the stitched output equals the whole-image
output. The stitched output lives in CPU memory (``C x H x W`` float32); the network
only ever holds ``batch_size`` windows.

Flip test-time augmentation averages the output with the output of the left-right
flipped image mapped back by :meth:`benchbio.method.Method.unflip`; methods whose
outputs encode absolute position (harmonic) have no such map and refuse it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import BenchbioError, DataError
from .instances import Prediction, as_prediction
from .method import Method
from .nets import divisor_of, pad_to_divisor, position_origins
from .progress import ProgressLines
from .registry import METHODS
from .runtime import resolve_device

__all__ = [
    "Predictor",
    "load_checkpoint",
    "load_run",
    "predictor_from_state",
    "position_origins",
    "window_starts",
    "forward_tiled",
    "predict_image",
    "collect_inputs",
    "read_input",
    "predict_files",
    "PredictReport",
]


@dataclass
class Predictor:
    """A trained model ready to apply, with the protocol figures it was trained under."""

    method: Method
    model: torch.nn.Module
    device: torch.device
    in_channels: int
    min_area: int = 0
    fg_at_test: bool = False
    source: str = ""

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this (the U-Net's total downsampling)."""
        return divisor_of(self.model)


# ---------------------------------------------------------------------------- loading
def predictor_from_state(
    state: dict[str, Any], source: str, device: str | torch.device = "auto",
    method_overrides: dict[str, Any] | None = None,
) -> Predictor:
    """Rebuild method and network from a checkpoint's contents.

    ``method_overrides`` replace method options at inference time (e.g.
    ``clusterer="sklearn"``); options that shape the network must not change.
    """
    missing = [key for key in ("method", "model", "in_channels") if key not in state]
    if missing:
        raise BenchbioError(
            f"{source} is not a benchbio checkpoint (it has no {', '.join(missing)}); "
            "use the best.pt that `benchbio run` logs under the run's checkpoint/ artifacts"
        )
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    options = {**state.get("method_options", {}), **(method_overrides or {})}
    method = METHODS.create(state["method"], **options)
    try:
        method.load_state(state.get("method_state") or {})
        model = method.build_model(int(state["in_channels"]))
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchbioError(
            f"cannot rebuild the {state['method']!r} model from {source}: {first}; was it "
            "written by another benchbio version, or were network options overridden?"
        ) from None
    model.to(dev).eval()
    return Predictor(
        method=method, model=model, device=dev, in_channels=int(state["in_channels"]),
        min_area=int(state.get("min_area") or 0), fg_at_test=bool(state.get("fg_at_test")),
        source=source,
    )


def load_checkpoint(
    path: str | Path, device: str | torch.device = "auto",
    method_overrides: dict[str, Any] | None = None,
) -> Predictor:
    """A :class:`Predictor` from a ``best.pt`` file."""
    path = Path(path)
    if not path.is_file():
        raise BenchbioError(f"checkpoint not found: {path}; give the path of a best.pt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise BenchbioError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}; is the file "
            "complete?"
        ) from None
    if not isinstance(state, dict):
        raise BenchbioError(f"{path} is not a benchbio checkpoint (not a dict of state)")
    return predictor_from_state(state, str(path), device, method_overrides)


def load_run(
    run_id: str, device: str | torch.device = "auto",
    method_overrides: dict[str, Any] | None = None,
) -> Predictor:
    """A :class:`Predictor` from the ``checkpoint/best.pt`` artifact of an MLflow run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from .tracking import check_tracking_store

    uri = check_tracking_store()
    with tempfile.TemporaryDirectory(prefix="benchbio-predict-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="checkpoint/best.pt", dst_path=tmp
            )
        except (MlflowException, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BenchbioError(
                f"cannot fetch checkpoint/best.pt of MLflow run {run_id!r} from {uri}: "
                f"{first[:200]}; check the run id (`benchbio ui`) and MLFLOW_TRACKING_URI"
            ) from None
        predictor = load_checkpoint(local, device, method_overrides)
    predictor.source = f"run {run_id}"
    return predictor


# ---------------------------------------------------------------------------- tiling
def window_starts(size: int, window: int, overlap: int, divisor: int) -> list[int]:
    """Starts of ``window``-pixel windows covering ``size`` pixels, consecutive windows
    overlapping by at least ``overlap``; starts are multiples of ``divisor`` (``size`` and
    ``window`` must be)."""
    if size <= window:
        return [0]
    step = max(divisor, (window - overlap) // divisor * divisor)
    return list(range(0, size - window, step)) + [size - window]


def _kept(starts: list[int], window: int, size: int) -> list[tuple[int, int]]:
    """The range each window contributes: overlaps split in the middle."""
    cuts = [0] + [(a + b + window) // 2 for a, b in zip(starts[:-1], starts[1:])] + [size]
    return list(zip(cuts[:-1], cuts[1:]))


@torch.no_grad()
def forward_tiled(
    model: torch.nn.Module, image: np.ndarray | torch.Tensor, device: torch.device, *,
    tile: int | None = 512, overlap: int = 128, batch_size: int = 4,
) -> torch.Tensor:
    """The network's ``(C_out, H, W)`` output for one ``(C, H, W)`` image, on the CPU.

    Images up to ``tile`` pixels a side are one window (exactly whole-image prediction);
    larger ones are cut into ``tile``-sized windows overlapping by ``overlap`` pixels,
    ``batch_size`` windows per forward pass. ``tile=None``: the whole image is one
    window, whatever its size (validation and test during training).
    """
    model.eval()
    divisor = divisor_of(model)
    x = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    x = pad_to_divisor(x.float(), divisor)
    h, w = image.shape[-2:]
    hp, wp = x.shape[-2:]
    tile = max(divisor, (tile or max(hp, wp)) // divisor * divisor)
    th, tw = min(tile, hp), min(tile, wp)
    ys, xs = window_starts(hp, th, overlap, divisor), window_starts(wp, tw, overlap, divisor)
    keep_y, keep_x = _kept(ys, th, hp), _kept(xs, tw, wp)
    windows = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    out: torch.Tensor | None = None
    for start in range(0, len(windows), max(1, batch_size)):
        chunk = windows[start : start + max(1, batch_size)]
        batch = torch.stack([x[:, ys[i] : ys[i] + th, xs[j] : xs[j] + tw] for i, j in chunk])
        origins = torch.tensor([[ys[i], xs[j]] for i, j in chunk], dtype=torch.float32)
        with position_origins(model, origins), torch.autocast(
            device.type, enabled=device.type == "cuda"
        ):
            pred = model(batch.to(device)).float().cpu()
        if out is None:
            out = torch.empty((pred.shape[1], hp, wp), dtype=torch.float32)
        for k, (i, j) in enumerate(chunk):
            (y0, y1), (x0, x1) = keep_y[i], keep_x[j]
            out[:, y0:y1, x0:x1] = pred[k, :, y0 - ys[i] : y1 - ys[i], x0 - xs[j] : x1 - xs[j]]
    assert out is not None
    return out[:, :h, :w]


def predict_image(
    predictor: Predictor, image: np.ndarray, fg: np.ndarray | None = None, *,
    tile: int | None = 512, overlap: int = 128, batch_size: int = 4, flip: bool = False,
    min_area: int | None = None, timings: dict[str, float] | None = None,
) -> Prediction:
    """Instances of one ``(C, H, W)`` image: label image (0 = background) and a score
    per instance (:class:`~benchbio.instances.Prediction`).

    ``flip`` averages with the left-right flipped prediction (methods that define
    :meth:`~benchbio.method.Method.unflip`). ``timings``, if given, receives the seconds
    spent in the network and in post-processing.
    """
    start = time.perf_counter()
    kwargs = {"tile": tile, "overlap": overlap, "batch_size": batch_size}
    output = forward_tiled(predictor.model, image, predictor.device, **kwargs)
    if flip:
        flipped = forward_tiled(
            predictor.model, np.ascontiguousarray(image[..., ::-1]), predictor.device, **kwargs
        )
        back = predictor.method.unflip(flipped, (-1,))
        if back is None:
            raise BenchbioError(
                f"method {predictor.method.name!r} cannot average flipped predictions (its "
                "outputs depend on absolute position); drop --flip-tta"
            )
        output = (output + back) / 2
    output = output.to(predictor.device)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize(predictor.device)
    network = time.perf_counter()
    area = predictor.min_area if min_area is None else min_area
    labels = as_prediction(predictor.method.postprocess(output, fg, area))
    if timings is not None:
        timings["network"] = timings.get("network", 0.0) + network - start
        timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - network
    return labels


# ---------------------------------------------------------------------------- files
INPUT_SUFFIXES = (".tif", ".tiff", ".png")


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (tif/tiff/png, not recursively) in folders."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            if not found:
                raise BenchbioError(f"no .tif/.tiff/.png images in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise BenchbioError(f"input not found: {path}; give image files or folders")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen and seen[path.stem] != path:
            raise BenchbioError(
                f"inputs {seen[path.stem]} and {path} would both be written as {path.stem}.tif;"
                " predict them into different --out folders"
            )
        seen[path.stem] = path
    return list(dict.fromkeys(files))


def read_input(path: Path, in_channels: int) -> np.ndarray:
    """A ``(C, H, W)`` float32 image scaled as the datasets scale theirs (8-bit / 255,
    else robust percentiles), with the channel count the model expects."""
    from .io import read_image, to_chw, to_unit

    image = to_chw(to_unit(read_image(path)), str(path))
    if image.shape[0] == 4 and in_channels == 3:
        image = image[:3]
    if image.shape[0] != in_channels:
        raise DataError(
            f"{path} has {image.shape[0]} channel(s) but the model expects {in_channels}; "
            "convert the image (e.g. to RGB or to grey) first"
        )
    return image.astype(np.float32)


@dataclass
class PredictReport:
    """What :func:`predict_files` did: files written, inputs that failed (with why),
    and the seconds spent per stage."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def output_paths(inputs: Sequence[Path], out_dir: Path, overlay: bool) -> dict[Path, list[Path]]:
    """The label TIFF, its scores sidecar (and overlay PNG) each input will be written to."""
    from .io import scores_path

    return {
        p: [out_dir / f"{p.stem}.tif", scores_path(out_dir / f"{p.stem}.tif")]
        + ([out_dir / "overlays" / f"{p.stem}.png"] if overlay else [])
        for p in inputs
    }


def predict_files(
    predictor: Predictor, inputs: Sequence[Path], out_dir: str | Path, *,
    overwrite: bool = False, overlay: bool = False, fg_dir: str | Path | None = None,
    on_error=None, **options: Any,
) -> PredictReport:
    """Predict every input into ``out_dir`` as ``<name>.tif`` (uint16 labels) and
    ``<name>.scores.json`` (each instance's score, which ``benchbio eval`` reads).

    Refuses, before any work, when an output exists and ``overwrite`` is False. An input
    that cannot be read or predicted is reported through ``on_error(path, message)`` and
    recorded; the others are still written. ``options`` go to :func:`predict_image`.
    Without a terminal on stdout, one plain line per image reports progress.
    """
    from .io import read_image, write_labels, write_scores

    out_dir = Path(out_dir)
    targets = output_paths(inputs, out_dir, overlay)
    existing = [t for ts in targets.values() for t in ts if t.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise BenchbioError(
            f"{existing[0]} already exists{more}; pass --overwrite to replace, or choose "
            "another --out"
        )
    report = PredictReport()
    lines = ProgressLines("image", len(inputs))
    for path in tqdm(inputs, desc="predict", unit="image", disable=None):
        try:
            image = read_input(path, predictor.in_channels)
            fg = None
            if fg_dir is not None:
                fg_path = _partner(Path(fg_dir), path.stem)
                fg = np.asarray(read_image(fg_path)) > 0
                fg = fg if fg.ndim == 2 else fg.any(-1)
                if fg.shape != image.shape[1:]:
                    raise DataError(f"{fg_path} is {fg.shape} but {path} is {image.shape[1:]}")
            prediction = predict_image(predictor, image, fg, timings=report.timings, **options)
        except BenchbioError as exc:
            message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            report.failed.append((path, message))
            if on_error is not None:
                on_error(path, message)
            lines.step(f"{path.name} failed")
            continue
        label_path, score_path, *overlay_path = targets[path]
        write_labels(label_path, prediction.labels)
        write_scores(score_path, prediction.scores)
        report.written += [label_path, score_path]
        if overlay_path:
            _write_overlay(overlay_path[0], image, prediction.labels)
            report.written.append(overlay_path[0])
        lines.step(f"{path.name} -> {label_path.name}")
    return report


def _partner(folder: Path, stem: str) -> Path:
    for suffix in INPUT_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise DataError(f"no foreground mask {stem}.tif/.png in {folder}")


def _write_overlay(path: Path, image: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    from .visualize import overlay_instances

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = overlay_instances(image, labels)
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(path)
