"""benchbio report draws validation score against wall-clock time (time to accuracy)."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from benchbio.cli import main
from benchbio.errors import BenchbioError
from benchbio.report import SECONDS_KEY, build_table, curves_csv, save_curves, write_report


def timed_run(method, seed, history, status="FINISHED"):
    """A fake MLflow run with test SBD and, per step, (seconds, val_sbd)."""
    tags = {"method": method, "dataset": "synthetic-cells", "seed": str(seed),
            "git_commit": "abc", "device": "cpu"}
    metrics = {"test_sbd": 0.5, "run_seconds": 60.0}
    if history:
        metrics |= {"val_sbd": history[-1][2], SECONDS_KEY: history[-1][1]}
    return SimpleNamespace(info=SimpleNamespace(status=status, run_id=f"{method}{seed}"),
                           data=SimpleNamespace(tags=tags, metrics=metrics))


HISTORY = {  # run id -> [(step, seconds, val_sbd)]
    "harmonic0": [(19, 60.0, 0.2), (39, 125.0, 0.5)],
    "harmonic1": [(19, 70.0, 0.3), (39, 130.0, 0.6)],
    "embedseg0": [(19, 40.0, 0.7)],
}


def history(run_id, key):
    column = {SECONDS_KEY: 1, "val_sbd": 2}[key]
    return [(row[0], row[column]) for row in HISTORY.get(run_id, [])]


def test_curves_pair_validation_scores_with_seconds_per_run():
    runs = [timed_run(m, s, HISTORY[f"{m}{s}"]) for m, s in
            [("harmonic", 0), ("harmonic", 1), ("embedseg", 0)]]
    table = build_table(runs, title="t", metrics=["sbd"], history=history)
    rows = {r.method: r for r in table.rows["synthetic-cells"]}
    assert table.curve_metric == "sbd" and table.has_curves
    assert rows["harmonic"].curves == [[(60.0, 0.2), (125.0, 0.5)], [(70.0, 0.3), (130.0, 0.6)]]
    assert rows["embedseg"].curves == [[(40.0, 0.7)]]
    lines = list(csv.DictReader(io.StringIO(curves_csv(table))))
    assert len(lines) == 5 and lines[0]["val_sbd"] == "0.7"  # rows sorted: embedseg first


def test_runs_without_seconds_give_no_curves_and_the_usual_four_files(tmp_path):
    runs = [timed_run("harmonic", 0, [])]
    table = build_table(runs, title="t", metrics=["sbd"], history=history)
    assert not table.has_curves and table.curve_metric == ""
    written = write_report(table, tmp_path)
    assert sorted(p.name for p in written) == ["figure.png", "table.csv", "table.md",
                                               "table.tex"]
    with pytest.raises(BenchbioError, match="no validation curves"):
        save_curves(table, tmp_path / "c.png")


def test_report_command_writes_curves_from_mlflow_histories(tmp_path, fast_store):
    import mlflow

    mlflow.set_experiment("tta")
    for method, points in [("harmonic", [(19, 61.0, 0.25), (39, 122.0, 0.55)]),
                           ("embedseg", [(19, 33.0, 0.4)])]:
        with mlflow.start_run(tags={"method": method, "dataset": "synthetic-cells",
                                    "seed": "0"}):
            for step, seconds, value in points:
                mlflow.log_metric("val_sbd", value, step=step)
                mlflow.log_metric(SECONDS_KEY, seconds, step=step)
            mlflow.log_metric("test_sbd", 0.5)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", "--experiment", "tta", "--out", str(out),
                                       "--metrics", "sbd"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "curves.png").stat().st_size > 1000
    points = list(csv.DictReader((out / "curves.csv").open()))
    assert [(p["method"], p["wall_seconds"], p["val_sbd"]) for p in points] == [
        ("embedseg", "33.0", "0.4"), ("harmonic", "61.0", "0.25"), ("harmonic", "122.0", "0.55")]
    assert "curves.png: validation sbd against wall-clock minutes" in (out / "table.md").read_text()


def test_report_command_draws_cpu_seconds_with_time_axis_cpu(tmp_path, fast_store):
    import mlflow

    mlflow.set_experiment("tta-cpu")
    with mlflow.start_run(tags={"method": "harmonic", "dataset": "synthetic-cells",
                                "seed": "0"}):
        for step, wall, cpu, value in [(9, 300.0, 55.0, 0.3), (19, 610.0, 110.0, 0.6)]:
            mlflow.log_metric("val_sbd", value, step=step)
            mlflow.log_metric(SECONDS_KEY, wall, step=step)
            mlflow.log_metric("val_cpu_seconds", cpu, step=step)
        mlflow.log_metric("test_sbd", 0.5)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", "--experiment", "tta-cpu", "--out", str(out),
                                       "--metrics", "sbd", "--time-axis", "cpu"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    points = list(csv.DictReader((out / "curves.csv").open()))
    assert [(p["cpu_seconds"], p["val_sbd"]) for p in points] == [("55.0", "0.3"),
                                                                   ("110.0", "0.6")]
    assert "against CPU minutes" in (out / "table.md").read_text()


def test_unknown_time_axis_is_one_clear_error():
    with pytest.raises(BenchbioError, match="unknown time axis 'gpu'"):
        build_table([timed_run("harmonic", 0, [])], title="t", history=history,
                    time_axis="gpu")


def test_unfinished_runs_add_dashed_curves_but_no_table_figures():
    HISTORY["embedseg1"] = [(19, 50.0, 0.6), (39, 99.0, 0.8)]
    try:
        runs = [timed_run("harmonic", 0, HISTORY["harmonic0"]),
                timed_run("embedseg", 1, HISTORY["embedseg1"], status="RUNNING")]
        without = build_table(runs, title="t", metrics=["sbd"], history=history)
        assert [r.method for r in without.rows["synthetic-cells"]] == ["harmonic"]
        table = build_table(runs, title="t", metrics=["sbd"], history=history,
                            unfinished=True)
        rows = {r.method: r for r in table.rows["synthetic-cells"]}
        assert rows["embedseg"].runs == 0 and rows["embedseg"].values == {}
        assert rows["embedseg"].unfinished_curves == [[(50.0, 0.6), (99.0, 0.8)]]
        assert table.n_runs == 1 and table.n_unfinished == 1
        lines = list(csv.DictReader(io.StringIO(curves_csv(table))))
        assert [(p["method"], p["finished"]) for p in lines] == [  # rows sorted by name
            ("embedseg", "no"), ("embedseg", "no"), ("harmonic", "yes"), ("harmonic", "yes")]
    finally:
        del HISTORY["embedseg1"]


def test_report_command_unfinished_draws_a_running_run(tmp_path, fast_store):
    import mlflow

    mlflow.set_experiment("tta-running")
    with mlflow.start_run(tags={"method": "harmonic", "dataset": "synthetic-cells",
                                "seed": "0"}):
        mlflow.log_metric("test_sbd", 0.5)
        mlflow.log_metric("val_sbd", 0.4, step=9)
        mlflow.log_metric(SECONDS_KEY, 30.0, step=9)
    run = mlflow.start_run(tags={"method": "embedseg", "dataset": "synthetic-cells",
                                 "seed": "0"})
    mlflow.log_metric("val_sbd", 0.7, step=9)
    mlflow.log_metric(SECONDS_KEY, 20.0, step=9)
    mlflow.end_run(status="KILLED")
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", "--experiment", "tta-running", "--out",
                                       str(out), "--metrics", "sbd", "--unfinished"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    points = list(csv.DictReader((out / "curves.csv").open()))
    assert {(p["method"], p["finished"]) for p in points} == {("harmonic", "yes"),
                                                             ("embedseg", "no")}
    assert run.info.run_id  # the killed run is drawn, the table has the finished one
    table = (out / "table.md").read_text()
    assert "Dashed curves: 1 run(s) not finished" in table
