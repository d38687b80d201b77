"""Benchmark: inference of a trained model, split into network / clustering / metrics.

Run ``python benchmarks/bench_inference.py --checkpoint best.pt --dataset cvppp
--data-dir ../shared/data`` (or ``--run RUN_ID``; ``--help`` for the rest). On the first
test images of the dataset it measures, on the model's device (a GPU when present):

- the network's forward pass, and the method's post-processing with benchbio's torch
  mean-shift against scikit-learn's ``MeanShift(bin_seeding=True)`` (the authors'
  clusterer, same bandwidth) on the same predicted outputs, with both SBDs;
- the dataset's metrics, and SBD against the official CVPPP per-label loops
  (``bench_metrics.reference_sbd``) on one predicted image;
- seconds per megapixel for each stage, training crops per second, and peak memory;
- optionally (``--synthetic``) both clusterers on 65,536 clean 12-D points.

The predicted outputs are saved as ``.npy`` under ``--cache`` (ignored by git), so the
clusterers can be compared again without the network. Writes a Markdown table
(``results/bench/inference.md`` by default) with the device and the commit.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_metrics import _machine, reference_sbd  # noqa: E402

_MEASURED = ("benchbio/cluster.py", "benchbio/inference.py", "benchbio/nets.py", "methods",
             "benchmarks")


def _commit() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *_MEASURED],
            cwd=REPO, capture_output=True, text=True,
        ).stdout.strip()
        return head + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def _timed(fn, repeats: int = 1):
    """(best seconds of ``repeats`` calls, last result); CUDA work is waited for."""
    best, result = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _sbd(pred: np.ndarray, gt: np.ndarray) -> float:
    from benchbio.evaluation import evaluate

    return float(evaluate([pred], [gt], metrics=["sbd"]).mean["sbd"])


def _training_throughput(predictor, samples, crop: int, batch: int, steps: int, fg: bool):
    """Crops per second of ``steps`` Adam steps on the method's own targets."""
    import copy

    from torch.utils.data import DataLoader

    from benchbio.nets import position_origins
    from benchbio.training import CropDataset, collate_crops

    crops = CropDataset(samples, predictor.method, crop, (0.8, 1.25), 0, fg)
    loader = DataLoader(crops, batch_size=min(batch, len(crops)), shuffle=True, drop_last=True,
                        collate_fn=collate_crops)
    model = copy.deepcopy(predictor.model).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    device = predictor.device
    done, seconds = 0, 0.0
    while done < steps:
        for b in loader:
            b = {k: v.to(device) for k, v in b.items()}
            image, origins = b.pop("image"), b.pop("origin")

            def step(image=image, b=b, origins=origins):
                opt.zero_grad(set_to_none=True)
                with position_origins(model, origins), torch.autocast(
                        device.type, enabled=device.type == "cuda"):
                    out = model(image)
                loss = predictor.method.loss(out.float(), b)
                loss.backward()
                opt.step()

            t, _ = _timed(step)
            if done:  # the first step warms up
                seconds += t
            done += 1
            if done >= steps:
                break
    return (done - 1) * len(image) / max(seconds, 1e-9)


def _synthetic_rows(seed: int = 0) -> list[str]:
    """Both clusterers on 65,536 clean 12-D points (16 blobs, sd 0.05, bandwidth 0.5)."""
    from sklearn.metrics import adjusted_rand_score

    from benchbio.cluster import mean_shift, mean_shift_sklearn

    rng = np.random.default_rng(seed)
    centres = rng.uniform(-2, 2, (16, 12))
    truth = rng.integers(0, 16, 65536)
    pts = (centres[truth] + rng.normal(0, 0.05, (65536, 12))).astype(np.float32)
    t_torch, (lab_t, _) = _timed(lambda: mean_shift(pts, 0.5), 3)
    t_sk, (lab_s, _) = _timed(lambda: mean_shift_sklearn(pts, 0.5))
    return [
        "",
        "## Clustering alone: 65,536 clean 12-D points",
        "",
        "16 Gaussian blobs (sd 0.05) in [-2, 2]^12, bandwidth 0.5, CPU:",
        "",
        "| clusterer | time (s) | adjusted Rand index vs truth |",
        "| --- | ---: | ---: |",
        f"| scikit-learn MeanShift (bin seeding) | {t_sk:.3f} | "
        f"{adjusted_rand_score(truth, lab_s):.4f} |",
        f"| benchbio torch mean-shift (best of 3) | {t_torch:.4f} | "
        f"{adjusted_rand_score(truth, lab_t):.4f} |",
        "",
        f"Speed-up: {t_sk / t_torch:,.0f}x.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a best.pt checkpoint")
    source.add_argument("--run", help="an MLflow run id (its checkpoint/best.pt)")
    parser.add_argument("--dataset", default="cvppp", help="dataset plugin (test split)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=4, help="test images measured")
    parser.add_argument("--sklearn-images", type=int, default=2,
                        help="of those, how many also go through scikit-learn (slow)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--train-crop", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--tile", type=int, default=256, help="tile for the tiling row")
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--synthetic", action="store_true",
                        help="also time both clusterers on 65,536 clean 12-D points")
    parser.add_argument("--cache", type=Path, default=REPO / ".devdata" / "bench-outputs")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "inference.md")
    args = parser.parse_args(argv)

    import benchbio
    from benchbio.evaluation import evaluate
    from benchbio.inference import forward_tiled, load_checkpoint, load_run

    def load(**overrides):
        if args.checkpoint:
            return load_checkpoint(args.checkpoint, args.device, overrides)
        return load_run(args.run, args.device, overrides)

    load_before = os.getloadavg()
    predictor = load()
    reference = load(clusterer="sklearn")
    dataset = benchbio.create_dataset(args.dataset, data_dir=args.data_dir)
    samples = list(dataset.split("test"))[: args.images]
    device = predictor.device
    args.cache.mkdir(parents=True, exist_ok=True)

    forward_tiled(predictor.model, samples[0].image, device)  # warm-up
    rows, sums = [], {"mp": 0.0, "net": 0.0, "post": 0.0, "metrics": 0.0}
    sbd_pairs = []
    for i, s in enumerate(samples):
        fg = s.fg if dataset.fg_at_test else None
        t_net, output = _timed(lambda s=s: forward_tiled(predictor.model, s.image, device))
        np.save(args.cache / f"{args.dataset}-{s.name}.npy", output.numpy())
        out_dev = output.to(device)
        t_post, labels = _timed(lambda out_dev=out_dev, fg=fg: predictor.method.postprocess(
            out_dev, fg, predictor.min_area), 3)
        t_metrics, _ = _timed(lambda labels=labels, s=s: evaluate(
            [labels], [s.instances], metrics=list(dataset.metrics)), 3)
        sbd_torch = _sbd(labels, s.instances)
        sk_time = sk_sbd = None
        if i < args.sklearn_images:
            sk_time, sk_labels = _timed(lambda output=output, fg=fg: reference.method
                                        .postprocess(output, fg, predictor.min_area))
            sk_sbd = _sbd(sk_labels, s.instances)
            sbd_pairs.append((sbd_torch, sk_sbd, t_post, sk_time))
        mp = s.image.shape[1] * s.image.shape[2] / 1e6
        sums["mp"] += mp
        sums["net"] += t_net
        sums["post"] += t_post
        sums["metrics"] += t_metrics
        rows.append((s.name, s.image.shape[1:], int(labels.labels.max()), t_net, t_post,
                     t_metrics,
                     sbd_torch, sk_time, sk_sbd))
        print(rows[-1], flush=True)

    # metric: benchbio SBD against the official loops on the first prediction
    first_pred, first_gt = predictor.method.postprocess(
        forward_tiled(predictor.model, samples[0].image, device).to(device),
        samples[0].fg if dataset.fg_at_test else None, predictor.min_area), samples[0].instances
    # tiled against whole-image prediction of the same image
    whole_out = forward_tiled(predictor.model, samples[0].image, device)
    tiled_out = forward_tiled(predictor.model, samples[0].image, device, tile=args.tile,
                              overlap=args.overlap)
    tiled_pred = predictor.method.postprocess(
        tiled_out.to(device), samples[0].fg if dataset.fg_at_test else None,
        predictor.min_area)
    tile_diff = float((whole_out - tiled_out).abs().max())
    tile_sbd = (_sbd(tiled_pred, first_gt), _sbd(first_pred, first_gt),
                _sbd(tiled_pred, first_pred.labels))
    t_fast_sbd, fast_value = _timed(lambda: _sbd(first_pred.labels, first_gt), 5)
    t_ref_sbd, ref_value = _timed(lambda: reference_sbd(first_pred.labels, first_gt))

    train_samples = list(dataset.split("train"))[:8]
    crops_per_s = _training_throughput(predictor, train_samples, args.train_crop,
                                       args.train_batch, args.train_steps, dataset.fg_at_test)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20 if gpu else None

    command = "python benchmarks/bench_inference.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    mp = sums["mp"]
    lines = [
        "# Inference speed: network, clustering, metrics",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {_machine()}; device: {gpu or 'cpu'}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads for the network (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), 1 for the torch mean-shift",
        f"- git commit: {_commit()}",
        f"- load average (1 min) before / after: {load_before[0]:.1f} / "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} logical CPUs (above the CPU count "
        "the machine was shared: absolute times are inflated, ratios measured side by side "
        "in this process hold better)",
        f"- model: {predictor.method.name} from {predictor.source} "
        f"(options: {predictor.method.options()})",
        f"- data: the first {len(samples)} test images of `{args.dataset}`",
        f"- command: `{command}`",
        "- network: one forward pass of the whole image (padded to the divisor); "
        "post-processing: the method's `postprocess` (clustering, background, small "
        "instances), best of 3; metrics: the dataset's metrics, best of 3",
        "",
        "| image | size | instances | network (s) | post-processing, torch (s) | metrics (s) "
        "| SBD torch | post-processing, scikit-learn (s) | SBD scikit-learn |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, shape, n, t_net, t_post, t_met, sbd_t, sk_t, sk_s in rows:
        sk = f"{sk_t:.2f} | {sk_s:.4f}" if sk_t is not None else "- | -"
        lines.append(f"| {name} | {shape[0]}x{shape[1]} | {n} | {t_net:.3f} | {t_post:.3f} | "
                     f"{t_met:.4f} | {sbd_t:.4f} | {sk} |")
    total = sums["net"] + sums["post"] + sums["metrics"]
    lines += [
        "",
        "## Per megapixel",
        "",
        "| stage | s / megapixel | share of network + post-processing |",
        "| --- | ---: | ---: |",
        f"| network | {sums['net'] / mp:.3f} | "
        f"{sums['net'] / (sums['net'] + sums['post']):.0%} |",
        f"| post-processing (torch mean-shift) | {sums['post'] / mp:.3f} | "
        f"{sums['post'] / (sums['net'] + sums['post']):.0%} |",
        f"| metrics ({', '.join(dataset.metrics)}) | {sums['metrics'] / mp:.4f} | - |",
        f"| total | {total / mp:.3f} | - |",
    ]
    if sbd_pairs:
        t_t = sum(p[2] for p in sbd_pairs)
        t_s = sum(p[3] for p in sbd_pairs)
        d_sbd = np.mean([p[0] for p in sbd_pairs]) - np.mean([p[1] for p in sbd_pairs])
        lines += [
            "",
            "## torch vs scikit-learn mean-shift on the same outputs",
            "",
            f"On {len(sbd_pairs)} image(s): scikit-learn {t_s:.2f} s, torch {t_t:.3f} s: "
            f"**{t_s / t_t:,.0f}x** faster; mean SBD torch "
            f"{np.mean([p[0] for p in sbd_pairs]):.4f}, scikit-learn "
            f"{np.mean([p[1] for p in sbd_pairs]):.4f} (difference {100 * d_sbd:+.2f} "
            "points).",
        ]
    lines += [
        "",
        "## Metric, training, memory",
        "",
        f"- SBD of one predicted image ({first_pred.labels.max()} predicted, "
        f"{len(np.unique(first_gt)) - 1} true instances): benchbio {t_fast_sbd * 1e3:.2f} ms "
        f"vs {t_ref_sbd:.2f} s for the official per-label loops ({t_ref_sbd / t_fast_sbd:,.0f}x)"
        f", values {fast_value:.6f} / {ref_value:.6f}",
        f"- tiling: {samples[0].name} in {args.tile}-pixel tiles overlapping by "
        f"{args.overlap}: network output differs from the whole-image output by at most "
        f"{tile_diff:.2e}; SBD vs truth {tile_sbd[0]:.4f} tiled, {tile_sbd[1]:.4f} whole; "
        f"SBD tiled vs whole labels {tile_sbd[2]:.4f}",
        f"- training: {crops_per_s:.2f} crops/s ({args.train_crop}x{args.train_crop}, batch "
        f"{args.train_batch}, {args.train_steps} Adam steps with the method's targets and "
        "loss, first step excluded)",
        f"- peak memory: {peak_rss:,.0f} MiB resident (whole process"
        + (f"), {peak_gpu:,.0f} MiB GPU allocated" if peak_gpu is not None else ")"),
    ]
    if args.synthetic:
        lines += _synthetic_rows()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
