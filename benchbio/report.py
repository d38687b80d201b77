"""Paper-style tables from a study's MLflow runs: Markdown, CSV, LaTeX and a PNG figure.

Rows are methods, columns test metrics, each cell the mean +- sample std over the
finished runs (seeds) of that method; the best mean per column is marked, using each
metric plugin's direction (higher, lower, or closest to 0 for signed keys); reference
figures (e.g. the paper's) sit in a column beside the measured ones.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BenchbioError
from .sweep import Reference

__all__ = ["Row", "StudyTable", "build_table", "metric_direction", "to_markdown", "to_csv",
           "to_latex", "save_figure", "save_curves", "curves_csv", "write_report",
           "OUTPUT_FILES", "CURVE_FILES", "SECONDS_KEY", "TIME_AXES"]

OUTPUT_FILES = ("table.md", "table.csv", "table.tex", "figure.png")
#: Written too when the runs logged :data:`SECONDS_KEY`: validation score against time.
CURVE_FILES = ("curves.png", "curves.csv")
#: Logged by the training loop at every validation (same step as ``val_*``): seconds
#: since the run's training began (guide search and validations included).
SECONDS_KEY = "val_seconds"
#: The clocks a report can draw curves against: the key each is logged as, its axis label.
#: ``cpu`` (the training process's CPU seconds) is the fair clock on a shared machine for
#: runs on one torch thread.
TIME_AXES: dict[str, tuple[str, str]] = {
    "wall": (SECONDS_KEY, "wall-clock minutes since training began"),
    "cpu": ("val_cpu_seconds", "CPU minutes of the training process (one thread: one core)"),
}

#: ``history(run_id, key)`` -> ``[(step, value), ...]`` (MLflow's metric history).
History = Callable[[str, str], Sequence[tuple[int, float]]]


def metric_direction(key: str) -> str:
    """``higher``, ``lower`` or ``zero`` (signed: best at 0), from the metric plugins."""
    from .evaluation import metric_producing

    found = metric_producing(key)
    if found is None:
        return "higher"
    metric = found[1]
    if key in metric.signed:
        return "zero"
    return "lower" if key in metric.lower_is_better else "higher"


@dataclass
class Row:
    """One method on one dataset: its per-seed figures and any reference figures."""

    dataset: str
    method: str
    values: dict[str, list[float]] = field(default_factory=dict)
    seeds: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    curves: list[list[tuple[float, float]]] = field(default_factory=list)  # (seconds, val)
    #: curves of runs that have not finished (running, stopped, failed): drawn, not scored
    unfinished_curves: list[list[tuple[float, float]]] = field(default_factory=list)
    reference: dict[str, float] = field(default_factory=dict)
    reference_label: str = ""
    best: set[str] = field(default_factory=set)
    in_study: bool = False

    @property
    def runs(self) -> int:
        return len(self.seeds)

    def mean(self, key: str) -> float | None:
        vals = self.values.get(key, [])
        return float(np.mean(vals)) if vals else None

    def std(self, key: str) -> float | None:
        vals = self.values.get(key, [])
        return float(np.std(vals, ddof=1)) if len(vals) > 1 else None

    @property
    def label(self) -> str:
        if not (self.runs or self.in_study) and self.reference_label:
            return self.reference_label
        if self.reference_label and self.reference_label != self.method:
            return f"{self.method} (ref: {self.reference_label})"
        return self.method


@dataclass
class StudyTable:
    """Everything the outputs show: rows per dataset, the metric columns, provenance."""

    title: str
    metrics: list[str]
    rows: dict[str, list[Row]]
    reference_source: str = ""
    commits: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    n_runs: int = 0
    n_unfinished: int = 0  # unfinished runs whose curves are drawn (dashed)
    missing: list[str] = field(default_factory=list)
    source: str = ""
    description: str = ""
    reproduce: str = ""
    curve_metric: str = ""  # the validation key of the rows' curves ("" when none)
    time_axis: str = "wall"  # the clock of the curves' seconds (a key of TIME_AXES)

    @property
    def has_curves(self) -> bool:
        return any(r.curves or r.unfinished_curves for rows in self.rows.values() for r in rows)

    def has_reference(self, dataset: str, key: str) -> bool:
        return any(key in r.reference for r in self.rows[dataset])


def _mark_best(rows: Sequence[Row], metrics: Sequence[str]) -> None:
    for key in metrics:
        direction = metric_direction(key)
        means = [(r, r.mean(key)) for r in rows if r.mean(key) is not None]
        if not means:
            continue
        score = {"higher": lambda m: -m, "lower": lambda m: m, "zero": abs}[direction]
        best = min(round(score(m), 3) for _, m in means)
        for r, m in means:
            if round(score(m), 3) == best:
                r.best.add(key)


def build_table(
    runs: Iterable[Any], *, title: str, metrics: Sequence[str] | None = None,
    references: Sequence[Reference] = (), reference_source: str = "",
    methods: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
    missing: Sequence[str] = (), source: str = "", description: str = "", reproduce: str = "",
    history: History | None = None, time_axis: str = "wall",
    unfinished: bool = False,
) -> StudyTable:
    """Group finished MLflow runs by (dataset, method) into rows with reference figures.

    ``methods``/``datasets`` fix the row/section order (a study's); otherwise sorted.
    ``metrics`` are the columns (keys without ``test_``); by default every test metric.
    With ``history``, each row also gets its runs' validation curves: the first of
    ``metrics`` logged as ``val_<key>`` against the clock ``time_axis`` (a key of
    :data:`TIME_AXES`: wall-clock or CPU seconds) at each validation. With
    ``unfinished``, runs that have not finished (a study in progress, a stopped run) add
    their curves too, drawn dashed; only finished runs give table figures.
    """
    if time_axis not in TIME_AXES:
        raise BenchbioError(f"unknown time axis {time_axis!r}; use {', '.join(TIME_AXES)}")
    seconds_key = TIME_AXES[time_axis][0]
    others = [r for r in runs if r.info.status != "FINISHED"] if unfinished else []
    runs = [r for r in runs if r.info.status == "FINISHED"]
    keys = list(metrics or sorted({k[5:] for r in runs for k in r.data.metrics
                                   if k.startswith("test_")}))
    if not runs and not references and not others:
        raise BenchbioError(f"no finished runs for {source or title} and no reference figures; "
                            "run the study first (`benchbio sweep SPEC.toml`)")
    by_key: dict[tuple[str, str], Row] = {}
    for run in runs:
        tags = run.data.tags
        row = by_key.setdefault((tags.get("dataset", "?"), tags.get("method", "?")),
                                Row(tags.get("dataset", "?"), tags.get("method", "?")))
        row.seeds.append(tags.get("seed", "?"))
        for key in keys:
            if f"test_{key}" in run.data.metrics:
                row.values.setdefault(key, []).append(float(run.data.metrics[f"test_{key}"]))
        if "run_seconds" in run.data.metrics:
            row.seconds.append(float(run.data.metrics["run_seconds"]))
    if others and not keys:
        keys = sorted({k[4:] for r in others for k in r.data.metrics if k.startswith("val_")
                       and k not in ("val_seconds", "val_cpu_seconds")})
    curve_metric = (_curve_metric(runs + others, keys, seconds_key) if history is not None
                    else "")
    if curve_metric:
        for run in runs + others:
            tags = run.data.tags
            curve = _curve(run.info.run_id, f"val_{curve_metric}", history, seconds_key)
            if not curve:
                continue
            key = (tags.get("dataset", "?"), tags.get("method", "?"))
            row = by_key.setdefault(key, Row(*key))
            (row.curves if run in runs else row.unfinished_curves).append(curve)
    order_m = list(methods or sorted({m for _, m in by_key}))
    order_d = list(datasets or sorted({d for d, _ in by_key} | {r.dataset for r in references}))
    for dataset in datasets or ():
        for method in methods or ():
            by_key.setdefault((dataset, method), Row(dataset, method)).in_study = True
    for ref in references:
        if ref.dataset not in order_d:
            continue
        row = by_key.setdefault((ref.dataset, ref.method), Row(ref.dataset, ref.method))
        row.reference.update(ref.values)
        row.reference_label = ref.label or row.reference_label
    rows: dict[str, list[Row]] = {}
    for dataset in order_d:
        measured = [by_key[(dataset, m)] for m in order_m if (dataset, m) in by_key]
        extra = [r for (d, m), r in by_key.items() if d == dataset and m not in order_m]
        extra_measured = sorted((r for r in extra if r.runs or r.unfinished_curves),
                                key=lambda r: r.method)
        ref_only = [r for r in extra if not (r.runs or r.unfinished_curves)]
        rows[dataset] = measured + extra_measured + ref_only
        _mark_best([r for r in rows[dataset] if r.runs], keys)
    return StudyTable(
        title=title, metrics=keys, rows=rows, reference_source=reference_source,
        commits=sorted({r.data.tags.get("git_commit", "unknown") for r in runs}),
        devices=sorted({r.data.tags.get("device", "unknown") for r in runs}),
        n_runs=len(runs), n_unfinished=len(others), missing=list(missing), source=source,
        description=description,
        reproduce=reproduce, curve_metric=curve_metric, time_axis=time_axis,
    )


def _curve_metric(runs: Sequence[Any], keys: Sequence[str], seconds_key: str) -> str:
    """The first column key some run logged both as ``val_<key>`` and with seconds."""
    timed = [r for r in runs if seconds_key in r.data.metrics]
    for key in keys:
        if any(f"val_{key}" in r.data.metrics for r in timed):
            return key
    return ""


def _curve(run_id: str, key: str, history: History,
           seconds_key: str = SECONDS_KEY) -> list[tuple[float, float]]:
    """``(seconds, value)`` at every step where the run logged both, by time."""
    seconds = dict(history(run_id, seconds_key))
    values = dict(history(run_id, key))
    return sorted((float(seconds[step]), float(v)) for step, v in values.items()
                  if step in seconds)


# ---------------------------------------------------------------------------- text
def _fmt(value: float | None, std: float | None = None, sep: str = " ± ") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.3f}"
    return text + (f"{sep}{std:.3f}" if std is not None else "")


def _arrow(key: str) -> str:
    return {"higher": "↑", "lower": "↓", "zero": "→0"}[metric_direction(key)]


def _columns(table: StudyTable, dataset: str) -> list[tuple[str, str]]:
    """(kind, key) per column after the method: measured figures and references."""
    cols = []
    for key in table.metrics:
        cols.append(("mean", key))
        if table.has_reference(dataset, key):
            cols.append(("ref", key))
    return cols


def _provenance(table: StudyTable) -> list[str]:
    lines = [f"From {table.n_runs} finished MLflow runs ({table.source}); mean ± sample std "
             "over seeds; best mean per column in bold (↑ higher, ↓ lower, →0 closest to 0 "
             "is best)."]
    if table.commits:
        lines.append(f"Commit: {', '.join(table.commits)}. Device: {', '.join(table.devices)}.")
    if table.reference_source:
        lines.append(f"Reference figures (ref columns): {table.reference_source}.")
    if table.missing:
        lines.append(f"No finished run yet for {len(table.missing)} cell(s): "
                     f"{'; '.join(table.missing)}.")
    if table.has_curves:
        lines.append(f"curves.png: validation {table.curve_metric} against "
                     f"{TIME_AXES[table.time_axis][1]} (one line per run); curves.csv: the "
                     "same points in seconds.")
        if table.n_unfinished:
            lines.append(f"Dashed curves: {table.n_unfinished} run(s) not finished (running, "
                         "stopped or failed): drawn as far as they got, not in the table.")
    if table.reproduce:
        lines.append(f"Reproduce: `{table.reproduce}`.")
    return lines


def to_markdown(table: StudyTable) -> str:
    """The table as GitHub Markdown, one section per dataset."""
    out = [f"# {table.title}", ""]
    if table.description:
        out += [table.description, ""]
    for dataset, rows in table.rows.items():
        cols = _columns(table, dataset)
        out += [f"## {dataset}", ""]
        head = ["method", "runs"] + [f"{k} {_arrow(k)}" if kind == "mean" else f"{k} (ref)"
                                     for kind, k in cols] + ["minutes/run"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|---|---:|" + "---:|" * (len(cols) + 1))
        for r in rows:
            cells = [r.label, str(r.runs)]
            for kind, key in cols:
                if kind == "ref":
                    cells.append(_fmt(r.reference.get(key)))
                else:
                    text = _fmt(r.mean(key), r.std(key))
                    cells.append(f"**{text}**" if key in r.best else text)
            cells.append(f"{np.mean(r.seconds) / 60:.1f}" if r.seconds else "–")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    for line in _provenance(table):
        out += [line, ""]
    return "\n".join(out)


def to_csv(table: StudyTable) -> str:
    """One line per (dataset, method): mean, std, best flag and reference per metric."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["dataset", "method", "label", "runs", "seeds"]
    for key in table.metrics:
        header += [f"{key}_mean", f"{key}_std", f"{key}_best", f"{key}_ref"]
    header.append("seconds_mean")
    writer.writerow(header)

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.6g}"

    for dataset, rows in table.rows.items():
        for r in rows:
            line = [dataset, r.method, r.label, r.runs,
                    " ".join(sorted(r.seeds, key=lambda s: (len(s), s)))]
            for key in table.metrics:
                line += [num(r.mean(key)), num(r.std(key)), int(key in r.best),
                         num(r.reference.get(key))]
            line.append(num(float(np.mean(r.seconds)) if r.seconds else None))
            writer.writerow(line)
    return buf.getvalue()


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#",
        "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def to_latex(table: StudyTable) -> str:
    """One booktabs ``table`` per dataset (needs ``\\usepackage{booktabs}``)."""
    arrows = {"higher": r"$\uparrow$", "lower": r"$\downarrow$", "zero": r"$\to 0$"}
    out = [f"% {table.title}: generated by `benchbio report`; needs \\usepackage{{booktabs}}"]
    for dataset, rows in table.rows.items():
        cols = _columns(table, dataset)
        out += [r"\begin{table}[t]", r"\centering",
                r"\begin{tabular}{l r " + "r " * len(cols) + "}", r"\toprule"]
        head = ["Method", "Runs"] + [
            f"{_tex(k)} {arrows[metric_direction(k)]}" if kind == "mean" else f"{_tex(k)} (ref)"
            for kind, k in cols]
        out += [" & ".join(head) + r" \\", r"\midrule"]
        for r in rows:
            cells = [_tex(r.label), str(r.runs)]
            for kind, key in cols:
                if kind == "ref":
                    cells.append(_fmt(r.reference.get(key)).replace("–", "--"))
                    continue
                text = _fmt(r.mean(key), r.std(key), sep=r" $\pm$ ").replace("–", "--")
                cells.append(rf"\textbf{{{text}}}" if key in r.best else text)
            out.append(" & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}",
                rf"\caption{{{_tex(table.title)}: {_tex(dataset)}. Mean $\pm$ std over seeds; "
                r"best in bold.}", r"\end{table}", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------- figure
def save_figure(table: StudyTable, path: Path) -> None:
    """Per-metric bars (mean over seeds, std as error bar, each seed a dot), one row of
    panels per dataset; reference figures as red diamonds (alone for methods not run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d, rows in table.rows.items() if rows]
    if not datasets or not table.metrics:
        raise BenchbioError("nothing to plot: no runs or reference figures with the chosen "
                            "metrics")
    panels = [(d, key) for d in datasets for key in table.metrics]
    n_methods = max(len(table.rows[d]) for d in datasets)
    panel_w = max(3.0, 0.4 * n_methods + 1.2)
    n_cols = max(1, min(len(panels), int(14 // panel_w)))
    n_rows = math.ceil(len(panels) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                             figsize=(panel_w * n_cols, 3.6 * n_rows))
    colors = plt.get_cmap("tab10").colors
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (dataset, key) in zip(axes.flat, panels):
        rows = table.rows[dataset]
        x = np.arange(len(rows))
        means = [r.mean(key) if r.mean(key) is not None else np.nan for r in rows]
        stds = [r.std(key) or 0.0 for r in rows]
        ax.bar(x, means, yerr=stds, capsize=3, alpha=0.8,
               color=[colors[k % len(colors)] for k in range(len(rows))],
               edgecolor=["black" if key in r.best else "none" for r in rows], linewidth=1.5)
        for k, r in enumerate(rows):
            vals = r.values.get(key, [])
            if vals:
                jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else [0.0]
                ax.scatter(k + np.asarray(jitter), vals, s=12, color="black", zorder=3)
        refs = [(k, r.reference[key]) for k, r in enumerate(rows) if key in r.reference]
        if refs:
            ax.scatter(*zip(*refs), marker="D", s=30, color="red", zorder=4, label="reference")
            ax.legend(fontsize=7, loc="best")
        ax.set_title(f"{key} {_arrow(key)}" + (f" — {dataset}" if len(datasets) > 1 else ""),
                     fontsize=10)
        names = [r.method if r.runs or r.in_study else r.label for r in rows]
        ax.set_xticks(x, [n if len(n) <= 28 else n[:27] + "…" for n in names],
                      rotation=40, ha="right", fontsize=8)
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(axis="y", alpha=0.3)
    title = table.title + (f" ({datasets[0]})" if len(datasets) == 1 else "")
    fig.suptitle(f"{title}: bars = mean over seeds, whiskers = std, dots = seeds, "
                 "black edge = best", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves_csv(table: StudyTable) -> str:
    """One line per validation: dataset, method, run index, whether the run finished,
    seconds, value."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "method", "run", "finished", f"{table.time_axis}_seconds",
                     f"val_{table.curve_metric}"])
    for dataset, rows in table.rows.items():
        for r in rows:
            curves = [(c, "yes") for c in r.curves] + [(c, "no") for c in r.unfinished_curves]
            for k, (curve, finished) in enumerate(curves):
                for seconds, value in curve:
                    writer.writerow([dataset, r.method, k, finished, f"{seconds:.1f}",
                                     f"{value:.6g}"])
    return buf.getvalue()


def save_curves(table: StudyTable, path: Path) -> None:
    """Validation score against minutes of the table's clock (wall-clock or CPU): one panel
    per dataset, one colour per method, one line per run (seed), a marker at each
    validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d, rows in table.rows.items()
                if any(r.curves or r.unfinished_curves for r in rows)]
    if not datasets:
        raise BenchbioError("no validation curves to draw: no run logged "
                            f"{TIME_AXES[table.time_axis][0]} beside a validation metric")
    fig, axes = plt.subplots(1, len(datasets), squeeze=False,
                             figsize=(6.5 * len(datasets), 4.2))
    colors = plt.get_cmap("tab10").colors
    for ax, dataset in zip(axes.flat, datasets):
        drawn = [r for r in table.rows[dataset] if r.curves or r.unfinished_curves]
        for k, r in enumerate(drawn):
            curves = [(c, "-") for c in r.curves] + [(c, "--") for c in r.unfinished_curves]
            for j, (curve, style) in enumerate(curves):
                minutes = [s / 60 for s, _ in curve]
                label = (r.method + ("" if r.curves else " (unfinished)")) if j == 0 else None
                ax.plot(minutes, [v for _, v in curve], marker="o", ms=3, lw=1.2,
                        ls=style, color=colors[k % len(colors)], label=label)
        ax.set_xlabel(TIME_AXES[table.time_axis][1])
        ax.set_ylabel(f"validation {table.curve_metric} {_arrow(table.curve_metric)}")
        ax.set_title(dataset, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{table.title}: validation {table.curve_metric} against time", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(table: StudyTable, out_dir: Path, overwrite: bool = False) -> list[Path]:
    """Write table.md, table.csv, table.tex and figure.png into ``out_dir``, and
    curves.png and curves.csv when the runs have validation curves (all or none: the
    texts are rendered and the figures drawn before an existing report is replaced)."""
    names = OUTPUT_FILES + (CURVE_FILES if table.has_curves else ())
    paths = [out_dir / name for name in names]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise BenchbioError(f"{existing[0]} exists; pass --overwrite to replace the report "
                            f"in {out_dir}")
    texts = [to_markdown(table), to_csv(table), to_latex(table)]
    out_dir.mkdir(parents=True, exist_ok=True)
    figure_tmp = out_dir / ".figure.tmp.png"
    save_figure(table, figure_tmp)
    curves_tmp = out_dir / ".curves.tmp.png"
    if table.has_curves:
        save_curves(table, curves_tmp)
    for path, text in zip(paths, texts):
        path.write_text(text)
    figure_tmp.replace(paths[3])
    if table.has_curves:
        curves_tmp.replace(out_dir / CURVE_FILES[0])
        (out_dir / CURVE_FILES[1]).write_text(curves_csv(table))
    return paths
