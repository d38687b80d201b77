"""`benchbio data download|info|show` end to end (download against a local server)."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import types

import pytest
from click.testing import CliRunner
from test_datasets_folder import write
from test_datasets_hela import FRAMES, write_ctc
from test_download import make_zip, server  # noqa: F401  (fixture)

from benchbio.cli import main
from benchbio.download import Archive, Download
from benchbio.registry import DATASETS


@pytest.fixture
def user(tmp_path):
    for i in range(6):
        write(tmp_path, "train", f"t{i}")
    for i in range(3):
        write(tmp_path, "test", f"s{i}")
    return tmp_path


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_info_prints_counts(user):
    result = run("data", "info", "folder", "--data-dir", str(user), "--opt", "min_area=7")
    assert result.exit_code == 0, result.output
    assert "train: 5 images, 10 instances, per image min 2 / mean 2.0 / max 2" in result.output
    assert "test: 3 images" in result.output and "20x24 (3)" in result.output
    assert "min_area=7" in result.output


def test_info_errors_are_one_line(user, tmp_path):
    result = run("data", "info", "folder", "--data-dir", str(user), "--opt", "nonsense")
    assert result.exit_code == 2 and "not of the form key=value" in result.output
    result = run("data", "info", "folder", "--data-dir", str(user), "--opt", "colour=red")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "dataset 'folder' has no option colour; its options are: eval_tile, metrics, " \
        "min_area, val_metric" in result.output
    result = run("data", "info", "folder", "--data-dir", str(user), "--opt", "min-area=x")
    assert result.exit_code == 2 and "min_area='x' must be of type int" in result.output
    result = run("data", "info", "cvppp", "--data-dir", str(tmp_path / "none"))
    assert result.exit_code == 2 and result.output.count("\n") == 1
    result = run("data", "info", "no-such-dataset")
    assert result.exit_code == 2 and "unknown dataset" in result.output


def test_show_writes_png_and_refuses_overwrite(user, tmp_path):
    out = tmp_path / "m.png"
    result = run("data", "show", "folder", "--data-dir", str(user), "--out", str(out), "--n", "2")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run("data", "show", "folder", "--data-dir", str(user), "--out", str(out))
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = run("data", "show", "folder", "--data-dir", str(user), "--out", str(out),
                 "--overwrite", "--split", "train")
    assert result.exit_code == 0, result.output


def test_show_real_cvppp(shared_data, tmp_path):
    out = tmp_path / "cvppp.png"
    result = run("data", "show", "cvppp", "--data-dir", str(shared_data), "--out", str(out),
                 "--n", "2")
    assert result.exit_code == 0, result.output and out.exists()


def test_download_hela_from_local_server(server, tmp_path, monkeypatch):  # noqa: F811
    src = tmp_path / "src"
    write_ctc(src, frames={"01": FRAMES["01"][:3], "02": FRAMES["02"][:3]})
    files = {str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*.tif")}
    data = make_zip(files)
    server.files["/DIC-C2DH-HeLa.zip"] = data
    import benchbio.datasets.hela as hela

    archive = Archive(server.url + "/DIC-C2DH-HeLa.zip", sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(hela, "DOWNLOAD", Download((archive,), licence="test terms"))
    monkeypatch.setenv("BENCHBIO_DATA", str(tmp_path / "root"))
    result = run("data", "download", "hela")
    assert result.exit_code == 0, result.output
    assert "licence: test terms" in result.output
    assert (tmp_path / "root" / "DIC-C2DH-HeLa" / "02_GT" / "SEG").is_dir()
    result = run("data", "info", "hela")
    assert result.exit_code == 0 and "test: 3 images" in result.output
    monkeypatch.setattr(hela, "DOWNLOAD", Download((Archive(archive.url, sha256="1" * 64),)))
    result = run("data", "download", "hela", "--data-dir", str(tmp_path / "other"))
    assert result.exit_code == 2 and "sha256 mismatch" in result.output


def test_download_without_checksum_needs_no_verify(server, tmp_path, monkeypatch):  # noqa: F811
    import benchbio.datasets.celegans as celegans

    server.files["/BBBC010_v1_foreground.zip"] = make_zip({"BBBC010_v1_foreground/x": b"1"})
    archive = Archive(server.url + "/BBBC010_v1_foreground.zip", subdir="bbbc010")
    monkeypatch.setattr(celegans, "DOWNLOAD", Download((archive,)))
    result = run("data", "download", "celegans", "--data-dir", str(tmp_path))
    assert result.exit_code == 2 and "--no-verify" in result.output
    result = run("data", "download", "celegans", "--data-dir", str(tmp_path), "--no-verify")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bbbc010" / "BBBC010_v1_foreground" / "x").exists()


def test_download_cvppp_and_unknown(tmp_path):
    result = run("data", "download", "cvppp", "--data-dir", str(tmp_path))
    assert result.exit_code == 2 and "plant-phenotyping.org" in result.output
    result = run("data", "download", "folder")
    assert result.exit_code == 2 and "has no download" in result.output


def test_a_plugin_from_another_package_offers_its_download(server, tmp_path, monkeypatch):  # noqa: F811
    """The registry picks up the factory's module's DOWNLOAD, as timm picks up
    default_cfgs: a dataset from another package needs nothing in benchbio."""
    module = types.ModuleType("other_package.cells")
    server.files["/cells.zip"] = data = make_zip({"cells/a.txt": b"1"})
    module.DOWNLOAD = Download((Archive(server.url + "/cells.zip",
                                        sha256=hashlib.sha256(data).hexdigest()),),
                               licence="CC0")
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def cells(options, data_dir=None):
        """Cells from another package."""

    cells.__module__ = module.__name__
    DATASETS.register("other-cells", options=dataclasses.make_dataclass("Options", []))(cells)
    try:
        result = run("data", "download", "other-cells", "--data-dir", str(tmp_path))
    finally:
        DATASETS.unregister("other-cells")
    assert result.exit_code == 0, result.output
    assert "licence: CC0" in result.output and (tmp_path / "cells" / "a.txt").exists()
    assert "other-cells" not in DATASETS
