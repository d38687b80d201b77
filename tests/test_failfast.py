"""Fail fast: every bad input of docs/failures.md gives one line and exit code 2 before any
training starts (and before any MLflow run exists), or is accepted as documented."""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner

from benchbio.cli import main
from benchbio.registry import DATASETS
from benchbio.training import RunConfig, run

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("fast_store")]

TINY = ["--epochs", "1", "--crop-size", "32", "--batch-size", "2", "--lr", "1e-3",
        "--set", "width=4", "--set", "kernel_size=3", "--set", "search_steps=5"]


def write_pair(root, split, name, *, image=None, labels=None, shape=(32, 32)):
    """One image (uint8 TIFF) and its label image (uint16 TIFF) under ``root/split``."""
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    if labels is None:
        labels = np.zeros(shape, np.uint16)
        labels[2:12, 2:14], labels[16:28, 10:30] = 1, 2
    if image is None:
        image = np.where(labels > 0, 200, 20).astype(np.uint8)
    tifffile.imwrite(root / split / "images" / f"{name}.tif", image)
    tifffile.imwrite(root / split / "masks" / f"{name}.tif", labels)


@pytest.fixture
def user_data(tmp_path):
    """A valid folder dataset: 4 train, 1 val, 2 test images of 32 x 32."""
    root = tmp_path / "data"
    for i in range(4):
        write_pair(root, "train", f"t{i}")
    write_pair(root, "val", "v0")
    for i in range(2):
        write_pair(root, "test", f"s{i}")
    return root


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def run_folder(root, *extra):
    return invoke("run", "-m", "harmonic", "-d", "folder", "--data-dir", str(root), *TINY, *extra)


def assert_one_line(result, *fragments, code=2):
    """Exit ``code``, exactly one line of output, no traceback, every fragment in it."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("benchbio: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def assert_no_run():
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["frobnicate"], ["No such command 'frobnicate'", "`benchbio --help`"]),
        (["run", "--bogus"], ["No such option '--bogus'", "`benchbio run --help`"]),
        (["run", "-m", "harmonic", "-d", "synthetic-cells", "--lr-schedule", "bogus"],
         ["'--lr-schedule'", "'onecycle'"]),
        (["run", "-m", "harmonic", "-d", "synthetic-cells", "--epochs", "x"],
         ["'--epochs'", "not a valid integer"]),
        (["eval"], ["Missing argument", "`benchbio eval --help`"]),
    ],
)
def test_usage_errors_are_one_line(args, fragments):
    assert_one_line(CliRunner().invoke(main, args, prog_name="benchbio"), *fragments)


def test_a_bare_sub_group_still_shows_its_help():
    result = CliRunner().invoke(main, ["data"], prog_name="benchbio")
    assert "Usage: benchbio data" in result.output and "benchbio: error" not in result.output


# ---------------------------------------------------------------------------- names
def test_unknown_names():
    assert_one_line(invoke("run", "-m", "nope", "-d", "synthetic-cells"),
                    "unknown method 'nope'", "harmonic")
    assert_one_line(invoke("run", "-m", "harmonic", "-d", "nope"), "available datasets")
    assert_one_line(invoke("run", "-m", "harmonic", "-d", "synthetic-cells", "--set", "widht=4"),
                    "has no option widht", "width")
    assert_no_run()


# ---------------------------------------------------------------------------- data layout
def test_missing_folder(tmp_path):
    assert_one_line(run_folder(tmp_path / "nowhere"), "does not exist",
                    "expected {train,val,test}/{images,masks}/")
    assert_one_line(invoke("run", "-m", "harmonic", "-d", "cvppp", "--data-dir",
                           str(tmp_path / "nowhere")),
                    "cvppp: expected", "benchbio data download cvppp")
    assert_no_run()


def test_empty_split(user_data):
    for f in (user_data / "train" / "images").iterdir():
        f.unlink()
    for f in (user_data / "train" / "masks").iterdir():
        f.unlink()
    assert_one_line(run_folder(user_data), "the 'train' split is empty", "no images found in")
    assert_no_run()


def test_wrong_layout(tmp_path):
    write_pair(tmp_path, ".", "a")  # images/ and masks/ at the top, no split folders
    assert_one_line(run_folder(tmp_path), "train/images is missing",
                    "expected {train,val,test}/{images,masks}/")
    assert_no_run()


def test_image_without_mask(user_data):
    (user_data / "test" / "masks" / "s1.tif").unlink()
    assert_one_line(run_folder(user_data), "s1.tif has no mask file", "add it or remove")
    assert_no_run()


def test_shape_mismatch(user_data):
    write_pair(user_data, "test", "s1", labels=np.eye(16, dtype=np.uint16),
               image=np.zeros((32, 32), np.uint8))
    assert_one_line(run_folder(user_data), "s1.tif is (32, 32) but its mask",
                    "s1.tif is (16, 16); image and mask must have the same size")
    assert_no_run()


def test_corrupt_image_file_anywhere_is_found_before_training(user_data):
    path = user_data / "test" / "images" / "s1.tif"  # the last image the run would read
    path.write_bytes(path.read_bytes()[:40])
    assert_one_line(run_folder(user_data), f"cannot read image {path}", "is the file complete?")
    assert_no_run()


def test_empty_mask(user_data):
    write_pair(user_data, "train", "t3", labels=np.zeros((32, 32), np.uint16))
    assert_one_line(run_folder(user_data), "t3.tif has no instance", "every pixel is background")
    assert_no_run()


def test_nan_pixels_and_mixed_channels(user_data):
    write_pair(user_data, "val", "v0", image=np.full((32, 32), np.nan, np.float32))
    assert_one_line(run_folder(user_data), "val image v0 has NaN or infinite pixels")
    write_pair(user_data, "val", "v0", image=np.zeros((32, 32, 3), np.uint8))
    assert_one_line(run_folder(user_data), "val image v0 has 3 channels", "have 1")
    assert_no_run()


@pytest.mark.slow
def test_non_consecutive_labels_are_relabelled(user_data, tmp_path):
    gapped = tmp_path / "gapped"
    for split, names in (("train", [f"t{i}" for i in range(4)]), ("val", ["v0"]),
                         ("test", ["s0", "s1"])):
        for name in names:
            labels = tifffile.imread(user_data / split / "masks" / f"{name}.tif")
            write_pair(gapped, split, name, labels=np.select([labels == 1, labels == 2],
                                                             [7, 300], 0).astype(np.uint16))

    def config(root):
        return RunConfig(method="harmonic", dataset="folder", epochs=1, batch_size=2,
                         lr=1e-3, crop_size=32, device="cpu", data_dir=str(root),
                         method_options={"width": 4, "kernel_size": 3, "search_steps": 5})

    assert run(config(gapped), track=False).test == run(config(user_data), track=False).test


# ---------------------------------------------------------------------------- store, device, output
def test_unreachable_tracking_server(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert_one_line(invoke("run", "-m", "harmonic", "-d", "synthetic-cells", *TINY),
                    "cannot reach the MLflow tracking server at http://127.0.0.1:9")


def test_tracking_store_that_cannot_be_created(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/mlflow.db")
    assert_one_line(invoke("run", "-m", "harmonic", "-d", "synthetic-cells", *TINY),
                    "cannot use the MLflow tracking store")


def test_cuda_asked_on_a_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_one_line(invoke("run", "-m", "harmonic", "-d", "synthetic-cells", "--device", "cuda"),
                    "--device cuda asked for, but no CUDA device", "--device cpu")
    assert_no_run()


def test_unwritable_output_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns, fixed when
    (tmp_path / "mlruns").write_text("not a folder")  # the store is first opened
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_line(invoke("run", "-m", "harmonic", "-d", "synthetic-cells", *TINY,
                           "--checkpoint-dir", str(blocker / "ckpt")),
                    f"cannot write to the checkpoint folder {blocker / 'ckpt'}",
                    "writable --checkpoint-dir")
    assert_one_line(invoke("run", "-m", "harmonic", "-d", "synthetic-cells", *TINY),
                    "cannot write to the artifact folder of experiment 'synthetic-cells'")
    assert_no_run()


@pytest.mark.parametrize("option, value, message", [
    ("--epochs", "0", "--epochs must be at least 1"),
    ("--val-every", "0", "--val-every must be at least 1"),
    ("--lr", "nan", "--lr must be a positive number"),
])
def test_impossible_options(option, value, message):
    assert_one_line(invoke("run", "-m", "harmonic", "-d", "synthetic-cells", *TINY,
                           option, value), message)
    assert_no_run()


@pytest.mark.parametrize("dataset", DATASETS.names())
def test_unknown_dataset_option_names_the_datasets_options(dataset, tmp_path):
    """`--data-opt nosuch=1` is one line naming the dataset's options, for every dataset
    (the options are checked before any data is looked for)."""
    names = ", ".join(sorted(f.name for f in dataclasses.fields(DATASETS.options_type(dataset))))
    result = invoke("run", "-m", "harmonic", "-d", dataset, "--data-dir", str(tmp_path), *TINY,
                    "--data-opt", "nosuch=1")
    assert_one_line(result, f"dataset {dataset!r} has no option nosuch; its options are: "
                            f"{names or 'none'}")
    assert_no_run()


# ---------------------------------------------------------------------------- sweep
def test_malformed_sweep_spec(tmp_path):
    spec = tmp_path / "study.toml"
    spec.write_text("[study\nname = 'x'\n")
    assert_one_line(invoke("sweep", str(spec)), "study.toml: not valid TOML")
    spec.write_text("[study]\nname = 'x'\n")
    assert_one_line(invoke("sweep", str(spec)), "methods must be a non-empty list")
    assert_no_run()
