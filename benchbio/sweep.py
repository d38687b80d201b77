"""Studies: grids of ``benchbio run`` cells (methods x datasets x seeds) from a TOML spec.

A spec names a study and its grid; every cell is one ordinary :func:`benchbio.training.run`
logged to MLflow with the tags ``study`` and ``config_hash``. The hash is of the fully
resolved config (method options after defaults, dataset options after defaults, harness
options, seed), so a cell is skipped when a FINISHED run with the same hash is already in
the store, and changing any option or default re-runs exactly the cells it touches.

Cells are run through submitit, one job per cell, by one scheduler for every executor:
``local`` (subprocesses on this machine, one per GPU or ``jobs`` on CPU) or ``slurm``
(a job array). The job callable is :class:`CellJob`, a ``submitit.helpers.Checkpointable``,
so a pre-empted SLURM job is requeued.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
import traceback
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from .errors import BenchbioError
from .evaluation import metric_keys
from .options import coerce_value, normalize_key, resolved_options
from .training import RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "Reference",
    "Spec",
    "Cell",
    "Outcome",
    "ExecutorOptions",
    "CellJob",
    "load_spec",
    "plan_cells",
    "resolved_config",
    "config_hash",
    "existing_runs",
    "pending_cells",
    "check_shared_store",
    "resumable_run",
    "make_executor",
    "run_cells",
]

#: RunConfig fields left out of the config hash: they do not change a cell's figures.
#: ``device`` too: a cell finished on one machine is not re-run on another (the device it
#: ran on is a tag, and the report lists it); likewise how it used the device (AMP,
#: channels-last, compile: ``accel.*`` tags).
NOT_HASHED = ("experiment", "workers", "data_dir", "device", "amp", "channels_last", "compile")

#: Harness options a spec's ``[run]`` tables may set: every RunConfig field but those
#: the grid or the study sets (``benchbio run``'s flags, with underscores).
RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in (
    "method", "dataset", "seed", "experiment", "method_options", "dataset_options"))
_RUN_TYPES = typing.get_type_hints(RunConfig)

_STUDY_KEYS = ("name", "description", "experiment", "methods", "datasets", "seeds", "metrics")
_TOP_KEYS = ("study", "run", "method_options", "dataset_options", "methods", "datasets",
             "references")
_PER_PLUGIN_KEYS = ("options", "run")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ---------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class Reference:
    """Published figures for one method on one dataset (e.g. a row of the paper's table)."""

    dataset: str
    method: str
    values: dict[str, float]
    label: str = ""


@dataclass
class Spec:
    """A study as written in its TOML file (see docs/sweeps.md for the format)."""

    name: str
    methods: list[str]
    datasets: list[str]
    seeds: list[int]
    path: Path
    description: str = ""
    experiment: str = ""
    metrics: list[str] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    per_method: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    per_dataset: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    references: list[Reference] = field(default_factory=list)
    reference_source: str = ""


def _fail(path: Path, message: str) -> BenchbioError:
    return BenchbioError(f"{path}: {message}")


def _table(path: Path, data: dict, key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise _fail(path, f"{where}{key} must be a table, got {type(value).__name__}")
    return value


def _check_keys(path: Path, table: dict, allowed: Sequence[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise _fail(path, f"unknown key {where}{key!r}; valid keys there: "
                              f"{', '.join(allowed)}")


def _names(path: Path, study: dict, key: str, registry) -> list[str]:
    value = study.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _fail(path, f"[study] {key} must be a non-empty list of names "
                          f"(see `benchbio list {key}`)")
    for name in value:
        try:
            registry.get(name)
        except BenchbioError as exc:  # one line listing the registered names
            raise _fail(path, f"[study] {key}: {exc}") from None
    if len(set(value)) != len(value):
        raise _fail(path, f"[study] {key} lists a name twice")
    return list(value)


def _coerce_run(path: Path, options: dict[str, Any], where: str) -> dict[str, Any]:
    """Harness options with RunConfig's types, by the one option coercion (an int lr
    becomes a float, so the hash of ``lr = 1`` and ``lr = 1.0`` agree)."""
    options = {normalize_key(k): v for k, v in options.items()}
    _check_keys(path, options, RUN_KEYS, where)
    out: dict[str, Any] = {}
    for key, value in options.items():
        try:
            out[key] = coerce_value(key, value, _RUN_TYPES[key], "benchbio run")
        except BenchbioError:
            raise _fail(path, f"{where}{key} has the wrong type ({value!r}); see "
                              "`benchbio run --help` for what it takes") from None
    return out


def _per_plugin(path: Path, data: dict, key: str, names: list[str]) -> dict[str, dict]:
    out = {}
    for name, table in _table(path, data, key, "").items():
        where = f"[{key}.{name}] "
        if name not in names:
            raise _fail(path, f"[{key}.{name}] names a {key[:-1]} not in [study] {key} "
                              f"({', '.join(names)})")
        if not isinstance(table, dict):
            raise _fail(path, f"{where}must be a table with 'options' and/or 'run'")
        _check_keys(path, table, _PER_PLUGIN_KEYS, where)
        out[name] = {
            "options": dict(_table(path, table, "options", where)),
            "run": _coerce_run(path, _table(path, table, "run", where), f"{where}run."),
        }
    return out


def _references(path: Path, data: dict) -> tuple[list[Reference], str]:
    table = _table(path, data, "references", "")
    _check_keys(path, table, ("source", "rows"), "[references] ")
    source = table.get("source", "")
    rows = table.get("rows", [])
    if not isinstance(rows, list):
        raise _fail(path, "[references] rows must be an array of tables ([[references.rows]])")
    known = metric_keys()
    out = []
    for i, row in enumerate(rows, start=1):
        where = f"[[references.rows]] #{i}"
        if not isinstance(row, dict) or not isinstance(row.get("dataset"), str) \
                or not isinstance(row.get("method"), str):
            raise _fail(path, f"{where} needs string keys 'dataset' and 'method'")
        values = {}
        for key, value in row.items():
            if key in ("dataset", "method", "label"):
                continue
            if key not in known:
                raise _fail(path, f"{where} has unknown metric key {key!r}; metric keys: "
                                  f"{', '.join(sorted(known))}")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise _fail(path, f"{where} {key} must be a number, got {value!r}")
            values[key] = float(value)
        out.append(Reference(row["dataset"], row["method"], values, str(row.get("label", ""))))
    return out, str(source)


def load_spec(path: str | os.PathLike) -> Spec:
    """Read and validate a study spec; every mistake is one line naming the bad key."""
    from .registry import DATASETS, METHODS

    path = Path(path)
    if not path.is_file():
        raise BenchbioError(f"study spec {path} not found; give the path of a .toml file "
                            "(see docs/sweeps.md)")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"not valid TOML: {exc}") from None
    _check_keys(path, data, _TOP_KEYS, "")
    study = _table(path, data, "study", "")
    if not study:
        raise _fail(path, "missing the [study] table (name, methods, datasets, seeds)")
    _check_keys(path, study, _STUDY_KEYS, "[study] ")
    name = study.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(path, "[study] name must be a word of letters, digits, '.', '_' or '-'")
    seeds = study.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise _fail(path, "[study] seeds must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise _fail(path, "[study] seeds lists a seed twice")
    metrics = study.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise _fail(path, "[study] metrics must be a list of metric keys, e.g. ['sbd']")
    known = metric_keys()
    for key in metrics:
        if key not in known:
            raise _fail(path, f"[study] metrics: unknown metric key {key!r}; metric keys: "
                              f"{', '.join(sorted(known))}")
    methods = _names(path, study, "methods", METHODS)
    datasets = _names(path, study, "datasets", DATASETS)
    references, source = _references(path, data)
    return Spec(
        name=name, methods=methods, datasets=datasets, seeds=list(seeds), path=path,
        description=str(study.get("description", "")),
        experiment=str(study.get("experiment", "")) or name,
        metrics=list(metrics),
        run=_coerce_run(path, _table(path, data, "run", ""), "[run] "),
        method_options=dict(_table(path, data, "method_options", "")),
        dataset_options=dict(_table(path, data, "dataset_options", "")),
        per_method=_per_plugin(path, data, "methods", methods),
        per_dataset=_per_plugin(path, data, "datasets", datasets),
        references=references, reference_source=source,
    )


# ---------------------------------------------------------------------------- cells
def dataset_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """A dataset's options after coercion and defaults, without loading any data: exactly
    the ``dataset_options`` a run of it logs to MLflow."""
    from .registry import DATASETS

    return resolved_options(DATASETS.resolve(name, given))


def resolved_config(config: RunConfig) -> dict[str, Any]:
    """What decides a cell's figures: every RunConfig field except :data:`NOT_HASHED`,
    with method and dataset options resolved as the run logs them to MLflow."""
    from .registry import METHODS

    method = METHODS.create(config.method, **config.method_options)
    out = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_HASHED}
    out["scale"] = [float(s) for s in config.scale]
    out["method_options"] = method.options()
    out["dataset_options"] = dataset_options(config.dataset, config.dataset_options)
    return out


def config_hash(config: RunConfig) -> str:
    """16 hex digits of the SHA-256 of :func:`resolved_config` as sorted JSON."""
    text = json.dumps(resolved_config(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One run of a study: its config, hash and the tags that find it again in MLflow."""

    study: str
    config: RunConfig
    config_hash: str

    @property
    def name(self) -> str:
        return f"{self.config.method} / {self.config.dataset} / seed {self.config.seed}"

    @property
    def tags(self) -> dict[str, str]:
        return {"study": self.study, "config_hash": self.config_hash}


def plan_cells(spec: Spec) -> list[Cell]:
    """The study's grid, datasets x methods x seeds, each config resolved and hashed.

    Options are layered: RunConfig defaults < ``[run]`` < ``[datasets.D.run]`` <
    ``[methods.M.run]``; ``[method_options]`` < ``[methods.M.options]``;
    ``[dataset_options]`` < ``[datasets.D.options]``.
    """
    cells = []
    for dataset in spec.datasets:
        per_d = spec.per_dataset.get(dataset, {"options": {}, "run": {}})
        for method in spec.methods:
            per_m = spec.per_method.get(method, {"options": {}, "run": {}})
            run_opts = {**spec.run, **per_d["run"], **per_m["run"]}
            for seed in spec.seeds:
                config = RunConfig(
                    method=method, dataset=dataset, seed=seed, experiment=spec.experiment,
                    method_options={**spec.method_options, **per_m["options"]},
                    dataset_options={**spec.dataset_options, **per_d["options"]},
                    **run_opts,
                )
                try:
                    digest = config_hash(config)
                except BenchbioError as exc:  # an option the plugin does not have
                    raise _fail(spec.path, str(exc)) from None
                cells.append(Cell(spec.name, config, digest))
    return cells


# ---------------------------------------------------------------------------- store
def existing_runs(experiment: str, study: str) -> list[Any]:
    """The study's MLflow runs (any status), newest first."""
    import mlflow

    if mlflow.get_experiment_by_name(experiment) is None:
        return []
    return mlflow.search_runs(
        experiment_names=[experiment], filter_string=f"tags.study = '{study}'",
        output_format="list", order_by=["attributes.start_time DESC"],
    )


def pending_cells(cells: Sequence[Cell], experiment: str) -> tuple[list[Cell], list[Cell]]:
    """Split cells into (to run, done): done when a FINISHED run has the cell's hash."""
    if not cells:
        return [], []
    finished = {r.data.tags.get("config_hash") for r in existing_runs(experiment, cells[0].study)
                if r.info.status == "FINISHED"}
    todo = [c for c in cells if c.config_hash not in finished]
    done = [c for c in cells if c.config_hash in finished]
    return todo, done


def absolute_tracking_uri(uri: str) -> str:
    """``sqlite:///rel.db`` -> ``sqlite:////abs/rel.db``, so jobs started elsewhere log to
    the same database; other URIs unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    if "://" not in uri and uri:
        return Path(uri).resolve().as_uri()
    return uri


def check_shared_store(uri: str) -> None:
    """Refuse a tracking store that jobs on other nodes cannot share (SLURM).

    Shared: an http(s) MLflow server, a database server (postgresql, mysql, mssql), or a
    SQLite file given by an absolute path (on a disk the nodes share). Not shared: a
    relative path, MLflow's default ``./mlruns`` or ``sqlite:///mlflow.db``.
    """
    from .tracking import check_tracking_store

    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme in ("http", "https", "postgresql", "mysql", "mssql"):
        pass
    elif scheme == "sqlite":
        if not uri.startswith("sqlite:////"):
            raise BenchbioError(
                f"the tracking store {uri} is a relative path, which jobs on other nodes "
                "would resolve in their own working directory; set MLFLOW_TRACKING_URI to an "
                "MLflow server (http://host:5000) or sqlite:////ABSOLUTE/path/on/shared/disk.db"
            )
    else:
        raise BenchbioError(
            f"the tracking store {uri or './mlruns'} is a local file store, which SLURM jobs "
            "cannot share safely; set MLFLOW_TRACKING_URI to an MLflow server "
            "(http://host:5000) or a database on shared disk (sqlite:////ABSOLUTE/path.db)"
        )
    check_tracking_store()  # reachable (server /health), usable; one line if not


# ---------------------------------------------------------------------------- jobs
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def record_failure(cell: Cell, reason: str, since_ms: int) -> str:
    """Make sure the cell's failure is in MLflow: its run started since ``since_ms``
    (left RUNNING by a job that died) is marked FAILED with ``reason``; with no run at
    all (it failed before training started), a FAILED run is created. Returns the id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from .tracking import flatten

    client = MlflowClient()
    for run in existing_runs(cell.config.experiment, cell.study):
        if run.data.tags.get("config_hash") == cell.config_hash \
                and run.info.start_time >= since_ms:
            if run.info.status in ("RUNNING", "SCHEDULED"):
                client.set_tag(run.info.run_id, "failure_reason", reason[:5000])
                client.set_terminated(run.info.run_id, "FAILED")
            return run.info.run_id
    config = cell.config
    mlflow.set_experiment(config.experiment)
    tags = {"method": config.method, "dataset": config.dataset, "seed": str(config.seed),
            **cell.tags, "failure_reason": reason[:5000]}
    run = client.create_run(mlflow.get_experiment_by_name(config.experiment).experiment_id,
                            tags=tags, run_name=f"{config.method}-{config.dataset}-s{config.seed}")
    for key, value in flatten(dataclasses.asdict(config)).items():
        client.log_param(run.info.run_id, key, value[:6000])
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def resumable_run(cell: Cell, requeued: bool) -> str | None:
    """The id of the cell's newest run to continue from its checkpoint, if any.

    A run that was interrupted (KILLED, checkpoint saved) is always continued; after a
    SLURM requeue also one left RUNNING or FAILED by the pre-empted job. The run needs its
    checkpoint folder (``benchbio.checkpoint``); otherwise the cell starts afresh.
    """
    from .checkpoint import CHECKPOINT_TAG, RUN_CONFIG

    statuses = ("KILLED", "RUNNING", "FAILED") if requeued else ("KILLED",)
    for run in existing_runs(cell.config.experiment, cell.study):
        if run.data.tags.get("config_hash") != cell.config_hash:
            continue
        folder = run.data.tags.get(CHECKPOINT_TAG)
        if run.info.status in statuses and folder and (Path(folder) / RUN_CONFIG).is_file():
            return run.info.run_id
        return None
    return None


class CellJob(submitit.helpers.Checkpointable):
    """The submitit job of one cell: ``training.run`` with the study's tags.

    Returns a dict (status, run id, test figures, seconds) instead of raising, so the
    scheduler reports every cell; a failure is also marked FAILED in MLflow with the
    reason. Checkpointable: a pre-empted or timed-out SLURM job saves its checkpoint
    (``training.run`` stops at the next batch on SIGUSR2/SIGTERM), submitit requeues it,
    and the requeued job continues the same MLflow run (``resume``). A cell whose last
    run was interrupted (KILLED) is continued the same way by the next sweep.
    """

    def __init__(self, tracking_uri: str, threads: int | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.threads = threads
        self.requeued = False

    def __call__(self, cell: Cell) -> dict[str, Any]:
        import torch

        from . import training
        from .checkpoint import RunInterrupted

        # through the environment, not mlflow.set_tracking_uri: nothing process-global
        # outlives the call when it runs in-process (DebugExecutor, tests)
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if self.threads:
            torch.set_num_threads(self.threads)
        started_ms = int(time.time() * 1000)
        resume = resumable_run(cell, self.requeued)
        try:
            result = training.run(cell.config, track=True, tags=cell.tags, resume=resume)
        except (RunInterrupted, submitit.core.utils.UncompletedJobError):
            raise  # pre-emption: submitit requeues the job (or reports it interrupted)
        except Exception as exc:  # reported per cell; the traceback goes to the job's log
            traceback.print_exc()
            reason = _one_line(exc)
            run_id = resume  # a resumed run is marked FAILED by training.run itself
            if resume is None:
                try:
                    run_id = record_failure(cell, reason, started_ms)
                except Exception:  # the store failing must not hide the first reason
                    traceback.print_exc()
            return {"status": "FAILED", "run_id": run_id, "reason": reason, "test": {},
                    "seconds": time.time() - started_ms / 1000}
        return {"status": "FINISHED", "run_id": result.run_id, "reason": "",
                "test": result.test, "seconds": result.seconds, "resumed": resume}

    def checkpoint(self, cell: Cell) -> submitit.helpers.DelayedSubmission:
        """Requeue the same cell, flagged so that it resumes its unfinished run."""
        self.requeued = True
        return submitit.helpers.DelayedSubmission(self, cell)


# ---------------------------------------------------------------------------- executors
@dataclass
class ExecutorOptions:
    """How to run cells: ``local`` (this machine) or ``slurm`` (through submitit)."""

    kind: str = "local"
    jobs: int = 1
    gpus: int = 0
    partition: str | None = None
    gpus_per_job: int = 1
    time_min: int = 24 * 60
    mem_gb: float | None = None
    cpus_per_job: int | None = None
    array_parallelism: int = 64
    slurm_extra: dict[str, str] = field(default_factory=dict)
    log_dir: Path = Path("sweep-logs")


@dataclass
class Outcome:
    """What became of one cell."""

    cell: Cell
    status: str  # FINISHED, FAILED, SUBMITTED
    run_id: str | None = None
    reason: str = ""
    test: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    job_id: str = ""


def make_executor(options: ExecutorOptions) -> tuple[Any, list[dict[str, Any]]]:
    """The submitit executor and its slots: one parameter dict per cell that may run at
    once (a GPU each on a GPU host, ``jobs`` on CPU; SLURM throttles its own array, so
    there every cell gets a slot)."""
    options.log_dir.mkdir(parents=True, exist_ok=True)
    folder = options.log_dir / "%j"
    if options.kind == "local":
        executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=options.time_min)
        if options.gpus:
            return executor, [{"gpus_per_node": 1, "visible_gpus": (g,)}
                              for g in range(options.gpus)]
        return executor, [{"gpus_per_node": 0} for _ in range(max(1, options.jobs))]
    if options.kind == "slurm":
        try:
            executor = submitit.AutoExecutor(folder, cluster="slurm")
        except RuntimeError as exc:  # submitit: no srun on this machine
            raise BenchbioError(f"--executor slurm: {exc} Run the sweep on a login node.") \
                from None
        params: dict[str, Any] = {
            "timeout_min": options.time_min, "gpus_per_node": options.gpus_per_job,
            "tasks_per_node": 1, "nodes": 1,
            "slurm_array_parallelism": options.array_parallelism,
        }
        if options.partition:
            params["slurm_partition"] = options.partition
        if options.mem_gb:
            params["mem_gb"] = options.mem_gb
        if options.cpus_per_job:
            params["cpus_per_task"] = options.cpus_per_job
        if options.slurm_extra:
            params["slurm_additional_parameters"] = dict(options.slurm_extra)
        executor.update_parameters(**params)
        return executor, []
    raise BenchbioError(f"unknown executor {options.kind!r}; use local or slurm")


def _submit(executor: Any, job: CellJob, cells: Sequence[Cell],
            slot: dict[str, Any] | None) -> list[Any]:
    if slot is not None:
        executor.update_parameters(**slot)
    with executor.batch():
        jobs = [executor.submit(job, cell) for cell in cells]
    return jobs


def run_cells(
    cells: Sequence[Cell], options: ExecutorOptions, tracking_uri: str, *,
    wait: bool = True, poll_s: float = 2.0,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_start: Callable[[Cell], None] | None = None,
) -> list[Outcome]:
    """Run cells through submitit, at most one per slot at a time; one code path for
    every executor. Returns the outcome of each cell in the order they ended.
    ``on_start(cell)`` is called when a cell is submitted, ``on_outcome`` when it ends."""
    executor, slots = make_executor(options)
    threads = None
    if options.kind == "local" and not options.gpus:
        threads = max(1, (os.cpu_count() or 1) // max(1, options.jobs))
    job = CellJob(absolute_tracking_uri(tracking_uri), threads)
    report = on_outcome or (lambda _: None)
    started = on_start or (lambda _: None)
    pending = list(cells)
    running: list[tuple[Any, Cell, int | None, int]] = []  # job, cell, slot, since ms
    outcomes: list[Outcome] = []
    free = list(range(len(slots)))
    try:
        while pending or running:
            if not slots and pending:  # the cluster throttles: one array for all cells
                since = int(time.time() * 1000)
                running += [(j, c, None, since)
                            for j, c in zip(_submit(executor, job, pending, None), pending)]
                for cell in pending:
                    started(cell)
                pending = []
            while pending and free:
                slot, cell = free.pop(0), pending.pop(0)
                [submitted] = _submit(executor, job, [cell], slots[slot])
                running.append((submitted, cell, slot, int(time.time() * 1000)))
                started(cell)
            if not wait:
                for submitted, cell, _, _ in running:
                    outcomes.append(Outcome(cell, "SUBMITTED", job_id=str(submitted.job_id)))
                    report(outcomes[-1])
                return outcomes
            still = []
            for submitted, cell, slot, since in running:
                if not submitted.done():
                    still.append((submitted, cell, slot, since))
                    continue
                outcomes.append(_collect(submitted, cell, since))
                report(outcomes[-1])
                if slot is not None:
                    free.append(slot)
            running = still
            if running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for submitted, _, _, _ in running:
            submitted.cancel(check=False)
        raise
    return outcomes


def _collect(submitted: Any, cell: Cell, since_ms: int) -> Outcome:
    """The outcome of a finished job; a job that died is recorded FAILED in MLflow."""
    try:
        result = submitted.result()
    except Exception as exc:  # the job process died (killed, out of memory, ...)
        reason = f"the job died: {_one_line(exc)} (log: {submitted.paths.stderr})"
        run_id = None
        try:
            run_id = record_failure(cell, reason, since_ms)
        except Exception:
            pass
        return Outcome(cell, "FAILED", run_id, reason, job_id=str(submitted.job_id))
    return Outcome(cell, result["status"], result["run_id"], result["reason"],
                   dict(result["test"]), float(result["seconds"]), str(submitted.job_id))
