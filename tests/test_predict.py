"""``benchbio predict`` on a tiny checkpoint and small files written to tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from conftest import tiny_untrained_harmonic
from PIL import Image

from benchbio.cli import main
from benchbio.inference import load_checkpoint, predict_image, read_input
from benchbio.io import read_scores

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ``best.pt`` as `benchbio run` writes it, for an untrained tiny harmonic model."""
    method, model = tiny_untrained_harmonic(48.0, 3)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({
        "method": "harmonic", "method_options": method.options(), "dataset": "folder",
        "dataset_options": {}, "in_channels": 3, "min_area": 4, "fg_at_test": False,
        "config": {}, "model": model.state_dict(), "method_state": method.state(),
        "epoch": 0, "val": {"sbd": 0.0},
    }, path)
    return path


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(folder / "a.png")
    tifffile.imwrite(folder / "b.tif", rng.integers(0, 255, (36, 30, 3), dtype=np.uint8))
    single = tmp_path / "c.png"
    Image.fromarray(rng.integers(0, 255, (33, 33, 3), dtype=np.uint8)).save(single)
    return folder, single


def run(*args):
    return CliRunner().invoke(main, ["predict", *map(str, args)])


def test_predict_writes_one_uint16_tif_per_input_with_its_name(checkpoint, inputs, tmp_path):
    folder, single = inputs
    out = tmp_path / "out"
    result = run("--checkpoint", checkpoint, folder, single, "--out", out, "--overlay")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.tif")) == ["a.tif", "b.tif", "c.tif"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png", "c.png"]
    # CliRunner's stdout is no terminal: one progress line per image, as in a log file
    lines = [line for line in result.stdout.splitlines() if line.startswith("image ")]
    assert [line.split(":")[0] for line in lines] == ["image 1/3", "image 2/3", "image 3/3"]
    assert "a.png -> a.tif" in lines[0] and all("remaining" in line for line in lines)
    predictor = load_checkpoint(checkpoint, "cpu")
    for name, path in [("a", folder / "a.png"), ("b", folder / "b.tif"), ("c", single)]:
        labels = tifffile.imread(out / f"{name}.tif")
        image = read_input(path, 3)
        assert labels.dtype == np.uint16 and labels.shape == image.shape[1:]
        expected = predict_image(predictor, image, min_area=4)
        assert np.array_equal(labels, expected.labels)
        assert read_scores(out / f"{name}.scores.json") == expected.scores


def test_predict_refuses_to_overwrite(checkpoint, inputs, tmp_path):
    folder, _ = inputs
    out = tmp_path / "out"
    assert run("--checkpoint", checkpoint, folder, "--out", out).exit_code == 0
    before = (out / "a.tif").stat().st_mtime_ns
    again = run("--checkpoint", checkpoint, folder, "--out", out)
    assert again.exit_code == 2
    assert "--overwrite" in again.stderr and "a.tif" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.output
    assert (out / "a.tif").stat().st_mtime_ns == before
    assert run("--checkpoint", checkpoint, folder, "--out", out, "--overwrite").exit_code == 0


def test_a_corrupt_input_is_named_and_the_others_are_written(checkpoint, inputs, tmp_path):
    folder, _ = inputs
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    result = run("--checkpoint", checkpoint, folder, "--out", out)
    assert result.exit_code == 2
    assert "broken.png" in result.stderr and "Traceback" not in result.output
    assert all(line.startswith("benchbio: error:") for line in result.stderr.splitlines())
    assert sorted(p.name for p in out.glob("*.tif")) == ["a.tif", "b.tif"]


def test_predict_from_an_mlflow_run(checkpoint, inputs, tmp_path, monkeypatch, fast_store):
    import mlflow

    monkeypatch.chdir(tmp_path)  # the run's artifacts go under the test's folder
    with mlflow.start_run() as active:
        mlflow.log_artifact(str(checkpoint), "checkpoint")
    folder, _ = inputs
    result = run("--run", active.info.run_id, folder / "a.png", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a.tif").is_file()
    missing = run("--run", "0123456789abcdef", folder / "a.png", "--out", tmp_path / "o2")
    assert missing.exit_code == 2 and "0123456789abcdef" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "exactly one of --run"),
        (["--checkpoint", "nowhere.pt"], "checkpoint not found"),
        (["--checkpoint", "CKPT", "--overlap", "600"], "--overlap 600"),
        (["--checkpoint", "CKPT", "--flip-tta"], "flip"),
        (["--checkpoint", "CKPT", "--set", "width=8"], "cannot rebuild"),
    ],
)
def test_clear_one_line_errors(checkpoint, inputs, tmp_path, args, message):
    folder, _ = inputs
    args = [str(checkpoint) if a == "CKPT" else a for a in args]
    result = run(*args, folder, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


def test_foreground_masks_limit_the_instances(checkpoint, inputs, tmp_path):
    folder, _ = inputs
    fg_dir = tmp_path / "fg"
    fg_dir.mkdir()
    mask = np.zeros((40, 52), np.uint8)
    mask[5:30, 10:40] = 255
    Image.fromarray(mask).save(fg_dir / "a.png")
    out = tmp_path / "out"
    result = run("--checkpoint", checkpoint, folder / "a.png", "--out", out, "--fg", fg_dir,
                 "--min-area", 0)
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(out / "a.tif")
    assert labels[mask == 0].max() == 0 and labels[mask > 0].min() >= 1
    missing = run("--checkpoint", checkpoint, folder / "b.tif", "--out", out, "--fg", fg_dir)
    assert missing.exit_code == 2 and "no foreground mask b" in missing.stderr
