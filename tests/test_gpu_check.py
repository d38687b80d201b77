"""benchmarks/gpu_check.py (issue 17): it runs end to end on the CPU with ``--tiny``, so it
cannot rot while no GPU is at hand; its fallback split sizes match the data; the CVPPP
copy it packs for a GPU machine loads identically."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchbio.registry import DATASETS, METHODS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_tiny_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out",
         str(out), "--data-dir", str(tmp_path / "no-data")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for title in ("(a) CUDA tests", "(b) Training throughput", "(d) Short harmonic training",
                  "(c) Inference per megapixel", "(e) Projected wall-clock time"):
        assert f"## {title}" in text
    assert "FAILED" not in text and "every section passed" in text
    assert "skipped" in text  # the CUDA tests, without CUDA
    for name in METHODS.names():  # every registered method was measured
        assert f"| {name} | 2 | amp + channels-last |" in text
    assert "| harmonic | 2 | amp + channels-last + compile |" in text
    for spec in REPO.glob("results/*/spec.toml"):
        study = gpu_check.load_toml(spec)["study"]["name"]
        assert f"| {study} |" in text


def test_known_split_sizes_match_the_data(shared_data):
    for name, known in gpu_check.KNOWN_SPLITS.items():
        ds = DATASETS.create(name, data_dir=str(shared_data))
        val = ds.split("val")
        assert len(ds.split("train")) == known["train"]
        assert len(val) == known["val"]
        assert val[0].image.shape[1] * val[0].image.shape[2] / 1e6 == pytest.approx(
            known["megapixels"], abs=1e-3)


def test_pack_cvppp_writes_an_identical_smaller_copy(tmp_path, capsys):
    folder = tmp_path / "src" / "cvppp2017_lsc" / "training" / "A1"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 9):
        rgba = rng.integers(0, 256, (30, 28, 4), dtype=np.uint8)
        rgba[..., 3] = 255
        Image.fromarray(rgba, "RGBA").save(folder / f"plant{i:03d}_rgb.png")
        lab = np.zeros((30, 28), np.uint8)
        lab[3:12, 4:20], lab[15:25, 2:10] = 1, 2 + i % 3
        img = Image.fromarray(lab, "P")
        img.putpalette([c for k in range(256) for c in (k, 255 - k, 0)])
        img.save(folder / f"plant{i:03d}_label.png")
    dest = tmp_path / "packed"
    assert gpu_check.main(["--pack-cvppp", str(tmp_path / "src"), str(dest)]) == 0
    packed = dest / "cvppp2017_lsc" / "training" / "A1"
    assert sorted(p.name for p in packed.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert Image.open(packed / "plant001_rgb.png").mode == "RGB"
    assert "identical to the original" in capsys.readouterr().out
