"""benchbio sweep: spec validation, config hashes, store checks, executors, and one real
sweep / re-run / delete / re-run / report sequence against an MLflow server."""

from __future__ import annotations

import csv
import dataclasses
import os
import textwrap

import pytest
from click.testing import CliRunner

from benchbio.cli import main
from benchbio.errors import BenchbioError
from benchbio.sweep import (
    CellJob,
    ExecutorOptions,
    check_shared_store,
    config_hash,
    existing_runs,
    load_spec,
    make_executor,
    plan_cells,
)
from benchbio.training import RunConfig

# Two cells that each train for seconds: 1 epoch on 2 images of 32x32, a width-4 U-Net.
TINY = """
[study]
name = "tiny"
methods = ["harmonic", "discriminative"]
datasets = ["synthetic-cells"]
seeds = [0]
metrics = ["sbd", "abs_dic"]

[run]
epochs = 1
batch_size = 2
crop_size = 32
lr = 3e-3

[method_options]
width = 4
kernel_size = 3

[methods.harmonic.options]
search_steps = 5

[dataset_options]
n_train = 2
n_val = 1
n_test = 1
size = 32

[references]
source = "test figures"

[[references.rows]]
dataset = "synthetic-cells"
method = "harmonic"
label = "Ours"
sbd = 0.9
"""


def write_spec(tmp_path, text=TINY, name="spec.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------- spec
def test_spec_layers_options_into_cells(tmp_path):
    spec = load_spec(write_spec(tmp_path, TINY + """
[datasets.synthetic-cells]
run = { epochs = 3, batch_size = 1 }

[methods.discriminative]
run = { epochs = 2 }
options = { width = 8 }
"""))
    cells = {c.config.method: c.config for c in plan_cells(spec)}
    assert cells["harmonic"].epochs == 3 and cells["discriminative"].epochs == 2  # method wins
    assert cells["harmonic"].batch_size == 1 and cells["harmonic"].lr == 3e-3
    assert cells["harmonic"].method_options == {"width": 4, "kernel_size": 3, "search_steps": 5}
    assert cells["discriminative"].method_options["width"] == 8
    assert cells["harmonic"].experiment == "tiny"
    assert spec.references[0].values == {"sbd": 0.9} and spec.references[0].label == "Ours"


@pytest.mark.parametrize("edit, message", [
    (("[run]", "[runn]"), "unknown key 'runn'"),
    (("epochs = 1", "epochs = 1\nepoch = 2"), "unknown key [run] 'epoch'"),
    (("epochs = 1", 'epochs = "one"'), "[run] epochs has the wrong type"),
    (('seeds = [0]', 'seeds = [0]\nseed = 1'), "unknown key [study] 'seed'"),
    (('"discriminative"]', '"discriminatif"]'), "unknown method 'discriminatif'"),
    (('seeds = [0]', 'seeds = []'), "seeds must be a non-empty list"),
    (('metrics = ["sbd", "abs_dic"]', 'metrics = ["sbdd"]'), "unknown metric key 'sbdd'"),
    (("sbd = 0.9", "sdb = 0.9"), "unknown metric key 'sdb'"),
    (("[methods.harmonic.options]", "[methods.embedseg.options]"),
     "[methods.embedseg] names a method not in [study] methods"),
    (("name = \"tiny\"", "name = \"a b\""), "[study] name must be a word"),
    (("[run]", "[run\n"), "not valid TOML"),
])
def test_malformed_spec_names_the_bad_key(tmp_path, edit, message):
    path = write_spec(tmp_path, TINY.replace(*edit, 1))
    with pytest.raises(BenchbioError) as info:
        plan_cells(load_spec(path))
    assert message in str(info.value) and str(path) in str(info.value)


def test_unknown_plugin_options_fail_when_planning(tmp_path):
    with pytest.raises(BenchbioError, match="has no option no_such"):
        plan_cells(load_spec(write_spec(tmp_path, TINY.replace("width = 4", "no_such = 4"))))
    with pytest.raises(BenchbioError, match="dataset 'synthetic-cells' has no option colour"):
        plan_cells(load_spec(write_spec(tmp_path, TINY.replace("\nsize = 32", "\ncolour = 1"))))


def test_malformed_spec_cli_is_one_line_exit_2(tmp_path):
    path = write_spec(tmp_path, TINY.replace("lr = 3e-3", "lr = 3e-3\nlearning_rate = 1"))
    result = CliRunner().invoke(main, ["sweep", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "unknown key [run] 'learning_rate'" in result.output
    missing = CliRunner().invoke(main, ["sweep", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "not found" in missing.output


# ---------------------------------------------------------------------------- hash
def test_config_hash_is_of_the_resolved_config():
    base = RunConfig("harmonic", "synthetic-cells", epochs=2)
    same = [
        dataclasses.replace(base, method_options={"n_guides": 12}),  # the default, spelled out
        dataclasses.replace(base, dataset_options={"n_train": 48}),
        dataclasses.replace(base, experiment="other", workers=2, device="cpu", data_dir="/x"),
        dataclasses.replace(base, amp="bf16", channels_last="on", compile=True),  # how it ran
        dataclasses.replace(base, lr=1e-4 * 1.0),
    ]
    differ = [
        dataclasses.replace(base, method_options={"n_guides": 8}),
        dataclasses.replace(base, dataset_options={"n_train": 8}),
        dataclasses.replace(base, seed=1),
        dataclasses.replace(base, epochs=3),
        dataclasses.replace(base, method="harmonic-low"),  # differs only in a default
    ]
    h = config_hash(base)
    assert all(config_hash(c) == h for c in same)
    assert len({h, *(config_hash(c) for c in differ)}) == len(differ) + 1


# ---------------------------------------------------------------------------- stores
def test_slurm_needs_a_shared_tracking_store():
    for uri, message in [("sqlite:///mlflow.db", "relative path"),
                         ("./mlruns", "local file store"),
                         ("file:///tmp/mlruns", "local file store")]:
        with pytest.raises(BenchbioError, match=message):
            check_shared_store(uri)


def test_slurm_store_check_accepts_absolute_sqlite_refuses_dead_server(fast_store, monkeypatch):
    import socket

    assert fast_store.startswith("sqlite:////")  # this test's store, at an absolute path
    check_shared_store(fast_store)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    with pytest.raises(BenchbioError, match="cannot reach the MLflow tracking server"):
        check_shared_store(dead)


def test_executors_share_one_interface(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"  # submitit looks for srun before it builds a SLURM executor
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    slurm, slots = make_executor(ExecutorOptions(
        kind="slurm", partition="gpu", gpus_per_job=1, time_min=90, mem_gb=32,
        array_parallelism=8, slurm_extra={"account": "lab"}, log_dir=tmp_path / "s"))
    params = slurm._executor.parameters
    assert slots == []  # SLURM throttles its own array
    assert params["partition"] == "gpu" and params["time"] == 90 and params["gpus_per_node"] == 1
    assert params["array_parallelism"] == 8 and params["additional_parameters"] == {
        "account": "lab"}
    local, slots = make_executor(ExecutorOptions(kind="local", jobs=3, log_dir=tmp_path / "l"))
    assert len(slots) == 3 and local.parameters["timeout_min"] == 24 * 60
    _, gpu_slots = make_executor(ExecutorOptions(kind="local", gpus=2, log_dir=tmp_path / "g"))
    assert [s["visible_gpus"] for s in gpu_slots] == [(0,), (1,)]


# ---------------------------------------------------------------------------- cells
def test_a_cell_that_fails_is_reported_and_marked_failed_in_mlflow(tmp_path, fast_store):
    import mlflow

    spec = load_spec(write_spec(tmp_path, TINY.replace("n_val = 1", "n_val = 0")))
    cell = plan_cells(spec)[0]
    outcome = CellJob(mlflow.get_tracking_uri())(cell)
    assert outcome["status"] == "FAILED" and "'val' split is empty" in outcome["reason"]
    [run] = existing_runs("tiny", "tiny")
    assert run.info.run_id == outcome["run_id"] and run.info.status == "FAILED"
    assert "'val' split is empty" in run.data.tags["failure_reason"]
    assert run.data.tags["config_hash"] == cell.config_hash


@pytest.mark.slow
def test_sweep_resume_and_report_against_an_mlflow_server(tmp_path, mlflow_server):
    """Two cells through submitit's local executor logging to a real server; the re-run
    skips both; deleting one run makes the next re-run do exactly that one; the report
    holds the logged figures."""
    import mlflow

    spec = write_spec(tmp_path, TINY)
    sweep = ["sweep", str(spec), "--executor", "local", "--jobs", "2",
             "--log-dir", str(tmp_path / "logs")]
    runner = CliRunner()
    first = runner.invoke(main, sweep)
    assert first.exit_code == 0, first.output
    assert "2 to run" in first.output and first.output.count("FINISHED") >= 2
    assert first.output.count("started") == 2 and "2/2 ended" in first.output  # log lines
    runs = existing_runs("tiny", "tiny")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["study"] for r in runs} == {"tiny"}

    second = runner.invoke(main, sweep)
    assert second.exit_code == 0 and "2 finished (skipped), 0 to run" in second.output
    assert "nothing to run" in second.output

    gone = next(r for r in runs if r.data.tags["method"] == "discriminative")
    mlflow.delete_run(gone.info.run_id)
    dry = runner.invoke(main, sweep + ["--dry-run"])
    assert "1 finished (skipped), 1 to run" in dry.output
    third = runner.invoke(main, sweep)
    assert third.exit_code == 0, third.output
    assert "1 to run" in third.output and "discriminative / synthetic-cells / seed 0" in \
        third.output
    runs = existing_runs("tiny", "tiny")
    assert len(runs) == 2 and gone.info.run_id not in {r.info.run_id for r in runs}

    report = runner.invoke(main, ["report", str(spec)])
    assert report.exit_code == 0, report.output
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "table.csv").open())}
    for run in runs:
        row = rows[run.data.tags["method"]]
        assert float(row["sbd_mean"]) == pytest.approx(run.data.metrics["test_sbd"], abs=1e-6)
        assert float(row["abs_dic_mean"]) == pytest.approx(run.data.metrics["test_abs_dic"])
    assert rows["harmonic"]["sbd_ref"] == "0.9"
    assert (tmp_path / "figure.png").stat().st_size > 0
    assert "| harmonic (ref: Ours) | 1 |" in (tmp_path / "table.md").read_text()


def test_an_interrupted_cell_resumes_its_own_run(tmp_path, monkeypatch, fast_store):
    import mlflow

    from benchbio import training
    from benchbio.checkpoint import CHECKPOINT_TAG, RUN_CONFIG
    from benchbio.sweep import resumable_run

    cell = plan_cells(load_spec(write_spec(tmp_path, TINY)))[0]
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / RUN_CONFIG).write_text("{}")
    client = mlflow.MlflowClient()
    experiment = mlflow.set_experiment("tiny").experiment_id

    def past_run(status, start_time, checkpoint=True):
        tags = {**cell.tags, **({CHECKPOINT_TAG: str(folder)} if checkpoint else {})}
        run = client.create_run(experiment, start_time=start_time, tags=tags)
        client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    assert resumable_run(cell, requeued=False) is None
    failed = past_run("FAILED", 1_000)
    assert resumable_run(cell, requeued=False) is None  # a failure starts afresh...
    assert resumable_run(cell, requeued=True) == failed  # ...unless SLURM requeued the job
    killed = past_run("KILLED", 2_000)
    assert resumable_run(cell, requeued=False) == killed
    past_run("KILLED", 3_000, checkpoint=False)  # nothing to resume from
    assert resumable_run(cell, requeued=False) is None

    past_run("KILLED", 4_000)
    calls = []

    def fake_run(config, track, tags, resume=None):
        calls.append((config, tags, resume))
        return training.RunResult(resume, {"sbd": 0.5}, {}, 0.5, 0, 1.0)

    monkeypatch.setattr(training, "run", fake_run)
    job = CellJob(mlflow.get_tracking_uri())
    outcome = job(cell)
    assert outcome["status"] == "FINISHED" and calls[0][2] == outcome["run_id"] is not None
    assert calls[0][1] == cell.tags and calls[0][0] == cell.config
    delayed = job.checkpoint(cell)  # what submitit requeues on pre-emption
    assert delayed.function is job and job.requeued and delayed.args == (cell,)


def test_slurm_sweep_refuses_the_default_store_before_submitting(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["sweep", str(write_spec(tmp_path)), "--executor",
                                       "slurm"])
    assert result.exit_code == 2 and "relative path" in result.output
    assert not (tmp_path / "mlflow.db").exists()  # refused before touching anything


def test_slurm_sweep_submits_one_array_through_the_same_scheduler(tmp_path, monkeypatch,
                                                                 fast_store):
    """With fake srun/sbatch on PATH: the sweep checks the store, submits the two cells as
    one job array with the chosen resources, and returns (--no-wait)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    result = CliRunner().invoke(main, [
        "sweep", str(write_spec(tmp_path)), "--executor", "slurm", "--partition", "gpu",
        "--time", "90", "--mem", "16", "--array-parallelism", "8", "--slurm-opt",
        "account=lab", "--no-wait", "--log-dir", str(tmp_path / "logs")])
    assert result.exit_code == 0, result.output
    assert result.output.count("SUBMITTED") >= 2 and "4242_0" in result.output
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-1%2",  # submitit caps the parallelism at the cells
                 "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --mem=16GB", "#SBATCH --account=lab", "#SBATCH --gpus-per-node=1"):
        assert line in script
