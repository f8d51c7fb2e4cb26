"""``infer report``: evaluated runs side by side, as rich tables, ``report.json`` and PNG plots.

A run is a folder ``infer evaluate`` wrote into (``results.json`` + ``samples.jsonl``); a folder holding
such folders (the ``--out`` of ``infer generate``, one per ECG mode, or a folder of baselines) stands for
each of them, ECG modes in their usual order. Every run must have been evaluated on the same items under
the same profile: the runs are compared pairwise with the first (paired tests, Holm-corrected), and the
runs of one model under several ECG modes (the same folder and checkpoint) give its ECG reliance: each
metric with the real ECG minus the same metric with the ECG replaced, with its paired interval and test.

report.json: ``format``, ``version``, ``profile``, ``n_items``, ``confidence``, ``headline`` (the metrics of
the per-question-type table and plots), ``runs`` ([{name, path, ecg_mode, checkpoint, decoding, metrics,
by_question_type}]), ``comparisons`` ({run name: ``compare_samples`` of the first run and this one}),
``ecg_reliance`` ([{run, checkpoint, runs: {mode: run name}, ...``ecg_reliance``}]), ``settings``, ``notes``
(predictions left out: not evaluated), ``plots``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecgbench.errors import UserError
from ecgbench.files import atomic_write
from ecgbench.infer import stats
from ecgbench.infer.evaluate import (
    ECG_MODES,
    METRIC_ORDER,
    RESULTS_FILE,
    SAMPLES_FILE,
    compare_samples,
    ecg_reliance,
    read_results,
    read_samples,
)
from ecgbench.infer.generate import PREDICTIONS_FILE

REPORT_FORMAT = "ecgbench-report"
REPORT_VERSION = 1
REPORT_FILE = "report.json"
METRICS_PLOT, QUESTION_TYPES_PLOT, RELIANCE_PLOT = "metrics.png", "question_types.png", "ecg_reliance.png"
#: metrics of the per-question-type table and plots, per profile, where the runs have them
HEADLINE = {
    "ecgbench": ("acc_norm", "qa_acc", "qa_f1", "macro_f1", "token_f1", "meteor"),
    "peer": ("acc", "bleu4", "meteor", "rougeL"),
}
SIGNIFICANT = 0.05  # Holm-corrected p below which a difference is marked


@dataclass
class EvaluatedRun:
    name: str  # as the report shows it: the folder as given (or given/sub-folder)
    path: Path
    results: dict[str, Any]
    samples: list[dict[str, Any]]

    @property
    def ecg_mode(self) -> str:
        return str(self.results.get("ecg_mode"))


def _evaluated(path: Path) -> bool:
    return (path / RESULTS_FILE).is_file() and (path / SAMPLES_FILE).is_file()


def _mode_order(path: Path) -> tuple[int, str]:
    name = path.name
    return (ECG_MODES.index(name) if name in ECG_MODES else len(ECG_MODES), name)


def find_runs(paths: Sequence[Path]) -> tuple[list[EvaluatedRun], list[str]]:
    """The evaluated runs the given folders stand for (see the module notes), each read once, and a note
    for each sub-folder with predictions that were not evaluated (left out of the report)."""
    found: dict[Path, str] = {}
    notes = []
    for given in paths:
        given = Path(given)
        if not given.is_dir():
            raise UserError(f"run folder not found: {given}")
        if _evaluated(given):
            found.setdefault(given.resolve(), str(given))
            continue
        inner = sorted((p for p in given.iterdir() if p.is_dir() and _evaluated(p)), key=_mode_order)
        if not inner:
            raise UserError(
                f"{given} holds no evaluated run ({RESULTS_FILE} and {SAMPLES_FILE}, itself or in its "
                "sub-folders): run `ecgbench infer evaluate` on its predictions first"
            )
        for sub in inner:
            found.setdefault(sub.resolve(), str(given / sub.name))
        notes += [
            f"{given / p.name} has predictions but no {RESULTS_FILE}: left out (`ecgbench infer evaluate` it)"
            for p in sorted(given.iterdir(), key=_mode_order)
            if p.is_dir() and (p / PREDICTIONS_FILE).is_file() and not _evaluated(p)
        ]
    runs = []
    for path, name in found.items():
        results = read_results(path / RESULTS_FILE)
        samples = read_samples(path / SAMPLES_FILE)
        if len(samples) != results.get("n_items"):
            raise UserError(
                f"{name}: {SAMPLES_FILE} holds {len(samples)} items, {RESULTS_FILE} says "
                f"{results.get('n_items')}: evaluate the run again"
            )
        runs.append(EvaluatedRun(name, path, results, samples))
    return runs, notes


def _groups(runs: Sequence[EvaluatedRun]) -> list[tuple[str, dict[str, EvaluatedRun]]]:
    """Runs of one model under several ECG modes: same folder, checkpoint and decoding; one per mode."""
    groups: dict[tuple[str, str, str], dict[str, EvaluatedRun]] = {}
    names: dict[tuple[str, str, str], str] = {}
    for run in runs:
        key = (
            str(run.path.parent),
            str(run.results.get("checkpoint")),
            json.dumps(run.results.get("decoding"), sort_keys=True),
        )
        names.setdefault(key, str(Path(run.name).parent))
        groups.setdefault(key, {}).setdefault(run.ecg_mode, run)
    return [(names[k], modes) for k, modes in groups.items() if "real" in modes and len(modes) > 1]


def _headline(profile: str, runs: Sequence[EvaluatedRun], asked: Sequence[str] | None) -> list[str]:
    present = {name for run in runs for name in run.results["metrics"]} | {
        name
        for run in runs
        for group in run.results.get("by_question_type", {}).values()
        for name in group["metrics"]
    }
    if asked:
        unknown = [m for m in asked if m not in present]
        if unknown:
            raise UserError(
                f"--metric {unknown[0]!r} is not in the runs' results (they have: "
                f"{', '.join(m for m in METRIC_ORDER if m in present)})"
            )
        return list(dict.fromkeys(asked))
    return [m for m in HEADLINE.get(profile, HEADLINE["ecgbench"]) if m in present]


def build_report(
    runs: Sequence[EvaluatedRun],
    *,
    metrics: Sequence[str] | None = None,
    resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
) -> dict[str, Any]:
    """The report of ``runs`` (see the module notes); a UserError when they were evaluated on different
    items or under different profiles."""
    if not runs:
        raise UserError("give at least one evaluated run to report")
    profiles = {run.results.get("profile") for run in runs}
    if len(profiles) > 1:
        raise UserError(
            "the runs were evaluated under different profiles "
            f"({', '.join(sorted(map(str, profiles)))}): evaluate them under one --profile"
        )
    profile = str(profiles.pop())
    confidence = runs[0].results.get("settings", {}).get("bootstrap", {}).get("confidence", stats.CONFIDENCE)
    base = runs[0]
    comparisons = {
        run.name: compare_samples(
            base.samples, run.samples, names=(base.name, run.name), resamples=resamples, seed=seed
        )
        for run in runs[1:]
    }
    reliance = []
    for name, modes in _groups(runs):
        result = ecg_reliance(
            {mode: run.samples for mode, run in modes.items()}, resamples=resamples, seed=seed
        )
        reliance.append(
            {
                "run": name,
                "checkpoint": modes["real"].results.get("checkpoint"),
                "runs": {mode: run.name for mode, run in modes.items()},
                **result,
            }
        )
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "profile": profile,
        "n_items": base.results["n_items"],
        "confidence": confidence,
        "headline": _headline(profile, runs, metrics),
        "runs": [
            {
                "name": run.name,
                "path": str(run.path),
                "ecg_mode": run.ecg_mode,
                "checkpoint": run.results.get("checkpoint"),
                "decoding": run.results.get("decoding"),
                "metrics": run.results["metrics"],
                "by_question_type": run.results.get("by_question_type", {}),
            }
            for run in runs
        ],
        "comparisons": comparisons,
        "ecg_reliance": reliance,
        "settings": {"resamples": resamples, "seed": seed, "significant_below": SIGNIFICANT},
    }


# ---------------------------------------------------------------------------------------------- tables


def overall_metrics(report: Mapping[str, Any]) -> list[str]:
    """Every overall metric any run has, in report order."""
    present = {name for run in report["runs"] for name in run["metrics"]}
    return [m for m in METRIC_ORDER if m in present] + sorted(present - set(METRIC_ORDER))


def _question_types(report: Mapping[str, Any]) -> list[str]:
    return sorted({t for run in report["runs"] for t in run["by_question_type"]})


def _cell(entry: Mapping[str, Any] | None, marked: bool = False) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    ci = entry.get("ci")
    text = f"{entry['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    return text + (" *" if marked else "")


def _significant(report: Mapping[str, Any], run: str, metric: str) -> bool:
    p = report["comparisons"].get(run, {}).get("metrics", {}).get(metric, {}).get("p_holm")
    return p is not None and p < report["settings"]["significant_below"]


def report_tables(report: Mapping[str, Any]) -> list[Any]:
    """Rich tables: overall metrics per run, headline metrics per question type, ECG reliance."""
    from rich.table import Table

    level = f"{report['confidence']:.0%}"
    names = [run["name"] for run in report["runs"]]
    first = names[0]
    caption = f"* differs from {first} (paired test, Holm p < {report['settings']['significant_below']})"
    overall = Table(
        title=f"{report['profile']} profile, {report['n_items']} items: value [{level} CI]",
        caption=caption if len(names) > 1 else None,
    )
    overall.add_column("metric")
    for name in names:
        overall.add_column(name, justify="right")
    for metric in overall_metrics(report):
        overall.add_row(
            metric,
            *(
                _cell(run["metrics"].get(metric), _significant(report, run["name"], metric))
                for run in report["runs"]
            ),
        )
    tables = [overall]
    types = _question_types(report)
    if types and report["headline"]:
        by_type = Table(title=f"per question type: value [{level} CI]")
        by_type.add_column("question type")
        by_type.add_column("n", justify="right")
        by_type.add_column("metric")
        for name in names:
            by_type.add_column(name, justify="right")
        for question_type in types:
            groups = [run["by_question_type"].get(question_type) for run in report["runs"]]
            n = next((g["n"] for g in groups if g), 0)
            shown = [m for m in report["headline"] if any(g and m in g["metrics"] for g in groups)]
            for k, metric in enumerate(shown):
                by_type.add_row(
                    question_type if k == 0 else "",
                    str(n) if k == 0 else "",
                    metric,
                    *(_cell(g["metrics"].get(metric) if g else None) for g in groups),
                )
            if shown:
                by_type.add_section()
        tables.append(by_type)
    for entry in report["ecg_reliance"]:
        table = Table(
            title=f"ECG reliance of {entry['run']} ({entry['n_items']} paired items): "
            f"real - replaced [{level} CI], Holm p"
        )
        table.add_column("metric")
        table.add_column("real", justify="right")
        for mode in entry["modes"]:
            table.add_column(mode, justify="right")
            table.add_column(f"real - {mode}", justify="right")
            table.add_column("p", justify="right")
        for metric in overall_metrics(report):
            row = entry["metrics"].get(metric)
            if row is None:
                continue
            cells = ["-" if row["real"] is None else f"{row['real']:.3f}"]
            for mode in entry["modes"]:
                m = row["modes"].get(mode, {})
                ci, p = m.get("ci"), m.get("p_holm")
                cells += [
                    "-" if m.get("value") is None else f"{m['value']:.3f}",
                    "-"
                    if m.get("difference") is None
                    else f"{m['difference']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""),
                    "-" if p is None else f"{p:.3g}",
                ]
            table.add_row(metric, *cells)
        tables.append(table)
    return tables


# ----------------------------------------------------------------------------------------------- plots


def _error(entry: Mapping[str, Any] | None) -> tuple[float, float, float] | None:
    """(value, distance down, distance up) of an entry with a value; no interval: zero bars."""
    if not entry or entry.get("value") is None:
        return None
    value = float(entry["value"])
    ci = entry.get("ci") or [value, value]
    return value, max(value - ci[0], 0.0), max(ci[1] - value, 0.0)


def _grouped_bars(ax: Any, labels: list[str], series: list[tuple[str, list[Any]]], ylabel: str) -> None:
    """One group of bars per label, one bar per series, each with its interval."""
    width = 0.8 / max(len(series), 1)
    for k, (name, entries) in enumerate(series):
        x, heights, low, high = [], [], [], []
        for j, entry in enumerate(entries):
            point = _error(entry)
            if point is not None:
                x.append(j - 0.4 + width * (k + 0.5))
                heights.append(point[0])
                low.append(point[1])
                high.append(point[2])
        ax.bar(x, heights, width, yerr=np.array([low, high]).reshape(2, -1), capsize=2, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def _width(groups: int, bars: int) -> float:
    """Figure width (inches) for ``groups`` groups of ``bars`` bars: readable, never a banner."""
    return float(min(16.0, max(6.0, 1.0 + groups * (0.25 + 0.12 * bars))))


def _legend_labels(names: list[str]) -> dict[str, str]:
    """Run names without the leading folders they all share: a legend has room only for what differs."""
    parts = [Path(n).parts for n in names]
    common = 0
    while len(parts) > 1 and all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return {name: str(Path(*p[common:])) for name, p in zip(names, parts, strict=True)}


def _legend(ax: Any) -> None:
    """The legend beside the plot, where it hides no bar."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def write_plots(report: Mapping[str, Any], out: Path) -> list[Path]:
    """metrics.png, question_types.png (where the runs have question types) and ecg_reliance.png (where
    a run has several ECG modes) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = f"{report['confidence']:.0%}"
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        atomic_write(out / name, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
        plt.close(fig)
        written.append(out / name)

    metrics = overall_metrics(report)
    runs = report["runs"]
    label = _legend_labels([run["name"] for run in runs])
    fig, ax = plt.subplots(figsize=(_width(len(metrics), len(runs)), 4), dpi=110)
    _grouped_bars(
        ax,
        metrics,
        [(label[run["name"]], [run["metrics"].get(m) for m in metrics]) for run in runs],
        f"value ({level} CI)",
    )
    ax.set_title(f"{report['profile']} profile, {report['n_items']} items")
    _legend(ax)
    save(fig, METRICS_PLOT)

    def type_metric(run: Mapping[str, Any], question_type: str, metric: str) -> Any:
        return (run["by_question_type"].get(question_type) or {}).get("metrics", {}).get(metric)

    panels = []  # (metric, the question types any run has it for)
    for metric in report["headline"]:
        types = [t for t in _question_types(report) if any(type_metric(r, t, metric) for r in runs)]
        if types:
            panels.append((metric, types))
    if panels:
        widest = max(len(types) for _, types in panels)
        fig, axes = plt.subplots(
            len(panels), 1, figsize=(_width(widest, len(runs)), 3 * len(panels)), dpi=110
        )
        for ax, (metric, types) in zip(np.atleast_1d(axes), panels, strict=True):
            series = [(label[run["name"]], [type_metric(run, t, metric) for t in types]) for run in runs]
            _grouped_bars(ax, types, series, f"{metric} ({level} CI)")
        _legend(np.atleast_1d(axes)[0])
        save(fig, QUESTION_TYPES_PLOT)

    if report["ecg_reliance"]:
        entries = report["ecg_reliance"]
        fig, axes = plt.subplots(
            len(entries),
            1,
            figsize=(_width(len(metrics), max(len(e["modes"]) for e in entries)), 3.2 * len(entries)),
            dpi=110,
        )
        for ax, entry in zip(list(np.atleast_1d(axes)), entries, strict=True):
            names = [m for m in metrics if m in entry["metrics"]]
            series = []
            for mode in entry["modes"]:
                rows = [entry["metrics"][m]["modes"].get(mode, {}) for m in names]
                series.append(
                    (f"real - {mode}", [{"value": r.get("difference"), "ci": r.get("ci")} for r in rows])
                )
            _grouped_bars(ax, names, series, f"real - replaced ({level} CI)")
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_title(f"ECG reliance of {entry['run']}")
            _legend(ax)
        save(fig, RELIANCE_PLOT)
    return written


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """report.json and the plots in ``out``; the paths written, report.json first."""
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, out)
    report["plots"] = [p.name for p in plots]
    body = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write(out / REPORT_FILE, lambda tmp: tmp.write_text(body, encoding="utf-8"))
    return [out / REPORT_FILE, *plots]
