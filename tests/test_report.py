"""benchbio report: grouping runs into rows, best marks, references, the four outputs."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from benchbio.cli import main
from benchbio.errors import BenchbioError
from benchbio.report import (
    build_table,
    metric_direction,
    to_csv,
    to_latex,
    to_markdown,
    write_report,
)
from benchbio.sweep import Reference


def fake_run(method, seed, metrics, dataset="synthetic-cells", status="FINISHED"):
    tags = {"method": method, "dataset": dataset, "seed": str(seed), "git_commit": "abc",
            "device": "cpu"}
    return SimpleNamespace(
        info=SimpleNamespace(status=status, run_id=f"{method}{seed}"),
        data=SimpleNamespace(tags=tags, metrics={f"test_{k}": v for k, v in metrics.items()}
                             | {"run_seconds": 60.0}),
    )


RUNS = [
    fake_run("harmonic", 0, {"sbd": 0.80, "abs_dic": 2.0, "dic": -2.0}),
    fake_run("harmonic", 1, {"sbd": 0.90, "abs_dic": 1.0, "dic": 0.0}),
    fake_run("discriminative", 0, {"sbd": 0.70, "abs_dic": 0.5, "dic": 0.5}),
    fake_run("discriminative", 1, {"sbd": 0.99, "abs_dic": 9.0, "dic": 9.0}, status="FAILED"),
]
REFS = [Reference("synthetic-cells", "harmonic", {"sbd": 0.899}, "Ours"),
        Reference("synthetic-cells", "Mask RCNN", {"sbd": 0.5}),
        Reference("cvppp", "harmonic", {"sbd": 0.1})]


def test_metric_directions_come_from_the_metric_plugins():
    assert metric_direction("sbd") == "higher"
    assert metric_direction("abs_dic") == "lower"
    assert metric_direction("dic") == "zero"
    assert metric_direction("ap50") == "higher"


def test_rows_mean_std_best_and_references():
    table = build_table(RUNS, title="t", metrics=["sbd", "abs_dic", "dic"], references=REFS,
                        methods=["harmonic", "discriminative"], datasets=["synthetic-cells"])
    rows = {r.method: r for r in table.rows["synthetic-cells"]}
    assert list(rows) == ["harmonic", "discriminative", "Mask RCNN"]  # study order, then refs
    h, d = rows["harmonic"], rows["discriminative"]
    assert h.runs == 2 and d.runs == 1  # the FAILED run does not count
    assert h.mean("sbd") == pytest.approx(0.85)
    assert h.std("sbd") == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert d.std("sbd") is None
    assert h.best == {"sbd"}  # higher sbd
    assert d.best == {"abs_dic", "dic"}  # lower |DiC|; DiC 0.5 closer to 0 than -1.0
    assert h.reference == {"sbd": 0.899} and h.label == "harmonic (ref: Ours)"
    assert rows["Mask RCNN"].runs == 0 and rows["Mask RCNN"].label == "Mask RCNN"
    assert "cvppp" not in table.rows  # a reference for a dataset outside the study


def test_signed_metric_best_is_closest_to_zero():
    runs = [fake_run("a", 0, {"dic": -0.2}), fake_run("b", 0, {"dic": 0.1}),
            fake_run("c", 0, {"dic": 3.0})]
    table = build_table(runs, title="t", metrics=["dic"])
    assert [r.method for r in table.rows["synthetic-cells"] if r.best] == ["b"]


def test_text_outputs():
    table = build_table(RUNS, title="my_study", metrics=["sbd", "abs_dic"], references=REFS,
                        reference_source="the paper, Table 1", datasets=["synthetic-cells"],
                        methods=["harmonic", "discriminative"], missing=["x / y / seed 2"])
    md = to_markdown(table)
    assert "| harmonic (ref: Ours) | 2 | **0.850 ± 0.071** | 0.899 |" in md
    assert "| Mask RCNN | 0 | – | 0.500 |" in md
    assert "Commit: abc. Device: cpu." in md and "the paper, Table 1" in md
    assert "x / y / seed 2" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert rows[0]["method"] == "harmonic" and float(rows[0]["sbd_mean"]) == pytest.approx(0.85)
    assert rows[0]["sbd_best"] == "1" and rows[0]["sbd_ref"] == "0.899"
    assert rows[2]["sbd_mean"] == "" and rows[2]["sbd_ref"] == "0.5"
    tex = to_latex(table)
    assert r"\textbf{0.850 $\pm$ 0.071}" in tex and r"abs\_dic" in tex and "my\\_study" in tex


def test_write_report_all_files_and_no_silent_overwrite(tmp_path):
    table = build_table(RUNS, title="t", metrics=["sbd", "abs_dic"], references=REFS,
                        datasets=["synthetic-cells"])
    paths = write_report(table, tmp_path)
    assert [p.name for p in paths] == ["table.md", "table.csv", "table.tex", "figure.png"]
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(BenchbioError, match="--overwrite"):
        write_report(table, tmp_path)
    write_report(table, tmp_path, overwrite=True)


def test_no_runs_and_no_references_is_a_clear_error():
    with pytest.raises(BenchbioError, match="no finished runs"):
        build_table([], title="t")


def test_report_cli_from_an_experiment(tmp_path, fast_store):
    import mlflow

    mlflow.set_experiment("exp")
    for method, sbd in (("harmonic", 0.7), ("harmonic", 0.8), ("embedseg", 0.6)):
        with mlflow.start_run(tags={"method": method, "dataset": "synthetic-cells",
                                    "seed": "0"}):
            mlflow.log_metric("test_sbd", sbd)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", "--experiment", "exp", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "table.md").read_text()
    assert "| harmonic | 2 | **0.750 ± 0.071** |" in text
    assert "| embedseg | 1 | 0.600 |" in text
    again = CliRunner().invoke(main, ["report", "--experiment", "exp", "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    missing = CliRunner().invoke(main, ["report", "--experiment", "nope", "--out", str(out)])
    assert missing.exit_code == 2 and "no MLflow experiment 'nope'" in missing.output
    bare = CliRunner().invoke(main, ["report"])
    assert bare.exit_code == 2 and "SPEC.toml" in bare.output
