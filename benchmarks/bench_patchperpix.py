"""Benchmark: PatchPerPix's decode on a BBBC010-size (520 x 696) image on the CPU.

Run ``python benchmarks/bench_patchperpix.py``; it writes ``results/bench/patchperpix.md``.
Each case runs in its own subprocess: it draws worm-like instances at BBBC010 scale
(``make_worms`` on a 696-pixel square, cropped to 520 rows: 20-30 worms, 10 pixels wide,
150-300 long, overlapping), turns their ground-truth patches and counts into logits
(+-4, plus Gaussian noise of ``--noise`` so that values are not all saturated), and
decodes them with ``PatchPerPix.decode``. It reports the decode's CPU time (process
time, which other processes' load changes far less than wall time), its wall time, the
peak resident memory of the decode alone (the kernel's high-water mark, reset with
``/proc/self/clear_refs`` after the network output is in memory) and, beside it, the
size of the network output it reads, and the decoded instances' AP and avS against the
instances drawn.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HEIGHT, WIDTH = 520, 696


def _vm(key: str) -> float:
    """A /proc/self/status figure in MB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_case(patch_size: int, seed: int, noise: float, options: dict) -> dict:
    """One decode, in this process (called in a subprocess by :func:`main`)."""
    import time

    import numpy as np
    import torch

    from benchbio import create_method
    from benchbio.datasets.synthetic import make_worms
    from benchbio.evaluation import evaluate
    from benchbio.methods.patchperpix import patch_targets

    _, stack = make_worms(seed, size=WIDTH, n_worms=(20, 30), width=10.0,
                          length=(150.0, 300.0))
    stack = stack[:, :HEIGHT]
    stack = stack[stack.any(axis=(1, 2))]
    k2 = patch_size * patch_size
    output = torch.empty((k2 + 3, HEIGHT, WIDTH), dtype=torch.float32)
    rng = torch.Generator().manual_seed(seed)
    step = 64
    targets = patch_targets(stack, patch_size)
    for start in range(0, k2, step):
        chunk = torch.from_numpy(targets[start:start + step] == 1).float() * 8 - 4
        output[start:start + len(chunk)] = chunk + noise * torch.randn(chunk.shape, generator=rng)
    del targets
    count = np.minimum(stack.sum(0), 2)
    for c in range(3):
        output[k2 + c] = torch.from_numpy(np.where(count == c, 4.0, -4.0))
    fg = count > 0
    method = create_method("patchperpix", patch_size=patch_size, head="count", **options)
    input_mb = output.numel() * 4 / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    rss_before = _vm("VmRSS")
    cpu, wall = time.process_time(), time.perf_counter()
    prediction = method.postprocess(output, None, min_area=0)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = _vm("VmHWM")
    figures = evaluate([prediction], [stack], ["coco", "avs"]).mean
    return {
        "patch_size": patch_size, "seed": seed, "noise": noise, "options": options,
        "instances": int(len(stack)), "fg_pixels": int(fg.sum()),
        "overlap_pixels": int((count > 1).sum()), "predicted": len(prediction.scores),
        "cpu_s": cpu, "wall_s": wall, "input_mb": input_mb,
        "rss_before_mb": rss_before, "decode_peak_mb": peak - rss_before,
        "ap": figures["ap"], "avs": figures["avs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-sizes", default="41,21", help="comma-separated patch sizes")
    parser.add_argument("--seeds", default="0,1", help="comma-separated image seeds")
    parser.add_argument("--noise", type=float, default=1.0, help="logit noise (std)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per decode")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a patchperpix option for every case (repeatable)")
    parser.add_argument("--out", default=str(REPO / "results/bench/patchperpix.md"))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from benchbio.commands.run import parse_assignments

    options = parse_assignments(tuple(args.set), "--set")
    if args.case:
        size, seed = (int(x) for x in args.case.split(","))
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(size, seed, args.noise, options)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    load = os.getloadavg()[0]
    for size in (int(x) for x in args.patch_sizes.split(",")):
        for seed in (int(x) for x in args.seeds.split(",")):
            cmd = [sys.executable, __file__, "--case", f"{size},{seed}",
                   "--noise", str(args.noise), "--threads", str(args.threads),
                   *(x for kv in args.set for x in ("--set", kv))]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    command = " " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""
    lines = [
        "# PatchPerPix decode on a BBBC010-size image (CPU)",
        "",
        f"`python benchmarks/bench_patchperpix.py{command}`"
        f" on {platform.machine()}, {args.threads} torch thread(s), commit {commit}, "
        f"{datetime.date.today()}, {os.cpu_count()} cores, load average {load:.1f} at the "
        "start. One subprocess per row. Input: ground-truth patches and counts of "
        f"synthetic worms at BBBC010 scale ({HEIGHT} x {WIDTH}, 10 px wide, 150-300 px "
        f"long, overlapping) as logits +-4 plus Gaussian noise (std {args.noise}).",
        "",
        "| patch | worms | fg pixels | overlap pixels | network output | decode peak memory "
        "| decode CPU time | wall time | AP | avS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['patch_size']} | {r['instances']} | {r['fg_pixels']} | "
            f"{r['overlap_pixels']} | {r['input_mb']:.0f} MB | {r['decode_peak_mb']:.0f} MB "
            f"| {r['cpu_s']:.1f} s | {r['wall_s']:.1f} s | {r['ap']:.3f} | {r['avs']:.3f} |"
        )
    lines += [
        "",
        "Decode peak memory is the growth of the process's peak resident set during the "
        "decode, on top of the network output it reads (the column before). The "
        "reference's dense consensus array alone, (2k)^2 x H x W float32, would take "
        + ", ".join(f"{(2 * s) ** 2 * HEIGHT * WIDTH * 4 / 2**30:.1f} GB for k = {s}"
                    for s in sorted({r['patch_size'] for r in rows}))
        + " (plus as much again for its counts). CPU time is the process time of the decode "
        "(one thread): it changes far less with other processes' load than the wall time. "
        "AP and avS check that the decode works at this scale; they are lower for k = 21, "
        "whose patches cannot see across the longer stretches where two 10-pixel-wide worms "
        "overlap entirely (see docs/methods.md, Oracle).",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
