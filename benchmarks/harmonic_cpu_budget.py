"""Why the harmonic method misses SBD >= 0.85 in five CPU minutes on synthetic-cells.

Three diagnostics behind ``results/synthetic-cells-cpu-budget/README.md``:

``train``: a fixed number of Adam steps of a method on synthetic-cells through the
harness's own crop pipeline (``CropDataset``), method hooks and scorer, then the test SBD
under several mean-shift settings and the test L1 error split into cell interiors, cell
boundaries and background. Step-based (not epoch-based) so that variants of different
speed are compared at the same number of updates.

``steptime``: where one training step's time goes (batch building, forward, backward,
Adam), in the default and the channels-last memory format.

``noise``: the ground-truth targets plus Gaussian noise (i.i.d. or spatially smoothed),
clustered as at test time: how accurate the network must be for mean-shift to work.

    python benchmarks/harmonic_cpu_budget.py train --lr 1e-2 --sched onecycle \\
        --set width=16 kernel_size=7 --tag k7
    python benchmarks/harmonic_cpu_budget.py noise
    python benchmarks/harmonic_cpu_budget.py steptime
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries
from torch.utils.data import DataLoader

from benchbio.cluster import embeddings_to_labels
from benchbio.methods.harmonic import harmonic_targets
from benchbio.nets import position_origins
from benchbio.options import parse_assignments
from benchbio.registry import DATASETS, METHODS
from benchbio.runtime import seed_everything
from benchbio.training import CropDataset, collate_crops, evaluate_samples


def _options(pairs: list[str]) -> dict:
    return parse_assignments(tuple(pairs), "--set")


def _sbd(model, m, samples, ds) -> float:
    model.eval()
    with torch.no_grad():
        preds = [m.postprocess(model(torch.from_numpy(s.image)[None].float())[0], None,
                               ds.min_area) for s in samples]
    model.train()
    return round(float(evaluate_samples(preds, samples, ["sbd"]).mean["sbd"]), 3)


def train(a: argparse.Namespace) -> dict:
    seed_everything(a.seed)
    ds = DATASETS.create("synthetic-cells", tissue=a.tissue)
    m = METHODS.create(a.method, **_options(a.set))
    train_samples, test = list(ds.split("train")), list(ds.split("test"))
    val = list(ds.split("val"))
    t0 = time.time()
    search: dict = {}
    m.fit(train_samples, seed=a.seed, log=lambda k, v, s: search.__setitem__(k, round(v, 4)))
    t_fit = time.time() - t0
    if a.corner:  # the old convention: every crop's maps and targets start at its corner
        targets = m.targets
        m.targets = lambda inst, fg, origin=(0, 0): targets(inst, fg)
    model = m.build_model(1)
    crops = CropDataset(train_samples, m, a.crop, (0.8, 1.25), a.seed, False)
    loader = DataLoader(crops, batch_size=a.bs, shuffle=True, drop_last=True,
                        collate_fn=collate_crops,
                        generator=torch.Generator().manual_seed(a.seed))
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = None
    if a.sched == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps,
                                                    pct_start=0.15)
    step, epoch, losses, curve = 0, 0, [], {}
    while step < a.steps:
        crops.epoch = epoch
        epoch += 1
        model.train()
        for batch in loader:
            image, origin = batch.pop("image"), batch.pop("origin")
            opt.zero_grad()
            with position_origins(model, None if a.corner else origin):
                loss = m.loss(model(image), batch)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
            step += 1
            if a.eval_every and step % a.eval_every == 0 and step < a.steps:
                curve[step] = _sbd(model, m, val, ds)
                print(json.dumps({"tag": a.tag, "step": step, "val_sbd": curve[step],
                                  "s": round(time.time() - t0)}), flush=True)
            if step >= a.steps:
                break
    t_loop = time.time() - t0 - t_fit
    model.eval()
    with torch.no_grad():
        outs = [model(torch.from_numpy(s.image)[None].float())[0] for s in test]
    res: dict = {}
    for metric, bandwidth in (("l2", 0.5), ("l1", 0.5), ("l2", 0.35), ("l2", 0.7)):
        preds = [embeddings_to_labels(o, bandwidth, metric=metric, min_area=ds.min_area)
                 for o in outs]
        scores = evaluate_samples(preds, test, ["sbd", "dic"]).mean
        res[f"{metric}@{bandwidth}"] = {k: round(float(v), 3) for k, v in scores.items()}
    res["method_postprocess"] = _sbd(model, m, test, ds)
    curve[a.steps] = _sbd(model, m, val, ds)
    errs: dict[str, list[float]] = {"interior": [], "boundary": [], "background": []}
    for out, s in zip(outs, test):
        target = harmonic_targets(m.guides, s.instances, None)["embedding"]
        err = np.abs(out.numpy() - target).mean(0)
        fg = s.instances > 0
        edge = ndi.binary_dilation(find_boundaries(s.instances), iterations=1)
        errs["interior"].append(err[fg & ~edge].mean())
        errs["boundary"].append(err[fg & edge].mean())
        errs["background"].append(err[~fg].mean())
    res["l1_error"] = {k: round(float(np.mean(v)), 4) for k, v in errs.items()}
    return {"tag": a.tag, "args": vars(a), "fit_s": round(t_fit, 1), "search": search,
            "train_s": round(t_loop, 1), "final_loss": float(np.mean(losses[-30:])),
            "val_sbd_by_step": curve, "test": res}


def noise(a: argparse.Namespace) -> list[dict]:
    ds = DATASETS.create("synthetic-cells", tissue=a.tissue)
    m = METHODS.create("harmonic")
    m.fit(list(ds.split("train")), seed=a.seed)
    test = list(ds.split("test"))[: a.images]
    targets = [harmonic_targets(m.guides, s.instances, None)["embedding"] for s in test]
    rng = np.random.default_rng(a.seed)
    rows = []
    for smooth in (0, 2):
        for sigma in (0.05, 0.1, 0.15, 0.2):
            preds = []
            for t in targets:
                n = rng.normal(0, 1, t.shape)
                if smooth:
                    n = np.stack([ndi.gaussian_filter(c, smooth) for c in n])
                    n /= n.std()
                noisy = torch.from_numpy((t + sigma * n).astype(np.float32))
                preds.append(embeddings_to_labels(noisy, 0.5, min_area=ds.min_area))
            scores = evaluate_samples(preds, test, ["sbd", "dic"]).mean
            rows.append({"smooth_px": smooth, "sigma": sigma,
                         "mean_abs_error": round(sigma * float(np.sqrt(2 / np.pi)), 3),
                         **{k: round(float(v), 3) for k, v in scores.items()}})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def steptime(a: argparse.Namespace) -> dict:
    """Seconds of one training step split into batch building, forward, backward and
    Adam, in the default and in the channels-last memory format (median of ``a.repeat``)."""
    seed_everything(a.seed)
    ds = DATASETS.create("synthetic-cells", tissue=a.tissue)
    m = METHODS.create(a.method, **_options(a.set))
    train_samples = list(ds.split("train"))
    m.fit(train_samples, seed=a.seed)
    crops = CropDataset(train_samples, m, a.crop, (0.8, 1.25), a.seed, False)
    t0 = time.perf_counter()
    batches = list(DataLoader(crops, batch_size=a.bs, drop_last=True,
                              collate_fn=collate_crops))
    result: dict = {"batch_s": round((time.perf_counter() - t0) / len(batches), 4)}
    for layout in ("contiguous", "channels_last"):
        model = m.build_model(1)
        image = batches[0]["image"]
        targets = {k: v for k, v in batches[0].items() if k not in ("image", "origin")}
        if layout == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            image = image.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=a.lr)
        times: list[tuple[float, float, float]] = []
        for i in range(a.repeat + 3):  # three warm-up steps
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = m.loss(model(image), targets)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            if i >= 3:
                times.append((t1 - t0, t2 - t1, t3 - t2))
        fwd, bwd, step = (round(float(np.median(c)), 4) for c in zip(*times))
        result[layout] = {"forward_s": fwd, "backward_s": bwd, "adam_s": step,
                          "step_s": round(fwd + bwd + step, 4)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("--method", default="harmonic")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--bs", type=int, default=16)
    t.add_argument("--crop", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--sched", choices=("constant", "onecycle"), default="constant")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    t.add_argument("--threads", type=int, default=torch.get_num_threads())
    t.add_argument("--tag", default="")
    t.add_argument("--eval-every", type=int, default=200,
                   help="validation SBD every this many steps (0: only at the end)")
    t.add_argument("--corner", action="store_true",
                   help="old convention: guide maps and targets start at each crop's corner")
    s = sub.add_parser("steptime")
    s.add_argument("--method", default="harmonic")
    s.add_argument("--bs", type=int, default=16)
    s.add_argument("--crop", type=int, default=64)
    s.add_argument("--lr", type=float, default=3e-3)
    s.add_argument("--set", nargs="*", default=["width=16", "kernel_size=3"],
                   metavar="KEY=VALUE")
    s.add_argument("--repeat", type=int, default=10)
    n = sub.add_parser("noise")
    n.add_argument("--images", type=int, default=8)
    for q in (t, n, s):
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--tissue", type=float, default=1.0,
                       help="synthetic-cells' tissue option (1: carpet, 0.3: clumps)")
    a = p.parse_args()
    if a.what != "steptime":  # steptime: torch's default, as `benchbio run`
        torch.set_num_threads(a.threads if a.what == "train" else 1)
    if a.what == "noise":
        noise(a)
    else:
        print(json.dumps(train(a) if a.what == "train" else steptime(a)), flush=True)


if __name__ == "__main__":
    main()
