"""``ecgbench infer generate | baseline | evaluate | compare | report``: answers, scores, paired tests,
tables and plots."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ecgbench.commands import SetsOption, SplitsOption, new_group, settings_options
from ecgbench.console import console, stdout
from ecgbench.errors import UserError
from ecgbench.settings import InferSettings

app = new_group()

CheckpointOption = Annotated[
    Path,
    typer.Option("--checkpoint", help="a training run folder (its best checkpoint) or an ELM checkpoint"),
]
StoresOption = Annotated[
    list[Path] | None,
    typer.Option("--store", help="segment store (repeatable; default: the stores the run trained on)"),
]


def _checkpoint_dir(path: Path) -> tuple[Path, dict[str, Any] | None]:
    from ecgbench.train import run_dir as rd

    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if (path / rd.RUN_FILE).is_file():
        run = rd.read_run(path)
        best = path / rd.BEST_DIR
        if not best.is_dir():
            raise UserError(f"run {path} has no best checkpoint yet (it has not been validated)")
        return best, run
    return path, None


@app.command("generate")
@settings_options(
    "infer.split",
    "infer.ecg",
    "infer.batch_size",
    "infer.max_new_tokens",
    "infer.do_sample",
    "infer.temperature",
    "infer.top_p",
    "infer.top_k",
    "infer.max_length",
    "infer.system_prompt",
    "infer.rag",
    "infer.rag_k",
    "infer.rag_placement",
    "seed",
)
def generate_command(
    checkpoint: CheckpointOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder: one <ecg mode>/predictions.jsonl each")],
    store: StoresOption = None,
    sets: SetsOption = None,
    splits: SplitsOption = None,
    *,
    infer: InferSettings,
    seed: int,
) -> None:
    """Answer every question of a split, batched; a killed run resumes where it stopped.

    Each --ecg mode is a run of its own (<out>/<mode>/predictions.jsonl): real, zeros, noise, shuffled
    (another conversation's ECGs) or none. --ecg none is the baseline "the same LLM without any ECG";
    `infer report <out>` sets every mode beside real (ECG reliance). The other baselines: `infer baseline`.
    """
    from accelerate import PartialState
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ecgbench.data.dataset import ConversationDataset
    from ecgbench.files import check_output, sha256_file
    from ecgbench.infer.generate import (
        Decoding,
        generate_predictions,
        join_parts,
        merge_lora,
        questions,
        share,
        sorted_predictions,
    )
    from ecgbench.models.checkpoint import CONFIG_FILE, load_elm

    directory, run = _checkpoint_dir(checkpoint)
    if run is not None:
        store = store or [Path(p) for p in run["inputs"]["stores"]]
        sets = sets or [Path(p) for p in run["inputs"]["sets"]]
    if not store or not sets:
        raise UserError("give --store and --sets (or a run folder as --checkpoint, which names them)")
    check_output(out, "--out", [*store, *sets, splits, checkpoint])
    dataset = ConversationDataset(sets, store, split=infer.split, splits=splits, seed=seed)
    asked = questions(dataset)
    order = [(dataset.conversation_id(q.index), q.turn) for q in asked]
    state = PartialState()
    elm = load_elm(directory, device=state.device)
    merge_lora(elm)
    config = elm.config
    seg_len, fs = dataset.records.check_shapes()
    if (seg_len, fs) != (config.signal_length, int(config.fs)):
        raise UserError(
            f"the stores hold {seg_len}-sample segments at {fs} Hz; "
            f"the ELM reads {config.signal_length} at {config.fs:g} Hz"
        )
    if config.architecture == "token" and "zeros" in infer.ecg:
        raise UserError(
            "--ecg zeros gives a flat line, which ECG-Byte cannot encode (it scales each lead by its own "
            "range): ablate a token ELM with --ecg noise, shuffled or none"
        )
    decoding = Decoding(
        max_new_tokens=infer.max_new_tokens,
        do_sample=infer.do_sample,
        temperature=infer.temperature,
        top_p=infer.top_p,
        top_k=infer.top_k,
        seed=seed,
    )
    checkpoint_id = f"{directory.resolve()}#{sha256_file(directory / CONFIG_FILE)[:16]}"
    from ecgbench.rag.retrieval import inference_retrieval, run_of_checkpoint

    retrieval = inference_retrieval(
        run if run is not None else run_of_checkpoint(directory),
        rag=infer.rag,
        k=infer.rag_k,
        placement=infer.rag_placement,
        stores=dataset.records.stores,
        splits_path=splits,
        split=infer.split,
    )
    elm.processor.retrieval = retrieval
    if retrieval is not None:  # retrieval changes the answers: a resumed file must not mix runs
        rag = retrieval.record()
        checkpoint_id += f"+rag#{rag['manifest_sha256'][:16]}:k{rag['k']}:{rag['placement']}"
    for mode in dict.fromkeys(infer.ecg):
        target = out / mode
        with Progress(
            TextColumn(f"[bold]{mode}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not state.is_main_process,
        ) as progress:
            task = progress.add_task(mode, total=share(len(asked), state.process_index, state.num_processes))
            generate_predictions(
                elm,
                dataset,
                target,
                ecg_mode=mode,
                decoding=decoding,
                batch_size=infer.batch_size,
                max_length=infer.max_length,
                system=infer.system_prompt,
                checkpoint_id=checkpoint_id,
                rank=state.process_index,
                processes=state.num_processes,
                progress=functools.partial(progress.advance, task),
            )
        state.wait_for_everyone()
        if state.is_main_process:
            path = (
                join_parts(target, state.num_processes, order)
                if state.num_processes > 1
                else sorted_predictions(target, order)
            )
            stdout.print(f"wrote {path} ({len(order)} answers, ecg {mode}, {decoding.record()['strategy']})")


@app.command("baseline")
@settings_options("infer.split")
def baseline_command(
    name: Annotated[str, typer.Argument(help="majority | nearest", metavar="BASELINE")],
    store: Annotated[list[Path], typer.Option("--store", help="segment store (repeatable)")],
    sets: Annotated[list[Path], typer.Option("--sets", help="conversation set Parquet file (repeatable)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the baseline's predictions.jsonl")],
    splits: SplitsOption = None,
    *,
    infer: InferSettings,
) -> None:
    """Answer a split without a model, as a run of its own (`infer evaluate` scores its predictions.jsonl).

    majority: per question type, the answer given most often on the train split (for a question with
    options, the most frequent option). nearest: the answer of the nearest training ECG (signal features)
    among the training conversations asked the same question, else the majority answer. The third
    baseline, the same LLM without any ECG, is `infer generate --ecg none`.
    """
    from ecgbench.console import progress
    from ecgbench.data.dataset import ConversationDataset, RecordIndex
    from ecgbench.files import check_output
    from ecgbench.infer.baselines import BASELINES, FIT_SPLIT, baseline_id, run_baseline
    from ecgbench.infer.generate import questions

    if name not in BASELINES:
        raise UserError(f"unknown baseline {name!r} (allowed: {', '.join(BASELINES)})")
    if infer.split == FIT_SPLIT:
        raise UserError(f"the baselines learn from the {FIT_SPLIT} split: answer another --split (val, test)")
    check_output(out, "--out", [*store, *sets, splits])
    records = RecordIndex.open(store)
    train = ConversationDataset(sets, records, split=FIT_SPLIT, splits=splits)
    answered = ConversationDataset(sets, records, split=infer.split, splits=splits)
    checkpoint_id = baseline_id(name, [*sets, *([splits] if splits else [])])
    with progress() as bar:
        tasks = {"answering": bar.add_task(f"{name}: answering", total=len(questions(answered)))}
        if name == "nearest":
            tasks["fitting"] = bar.add_task(f"{name}: fitting", total=len(questions(train)))
        path, sources = run_baseline(
            name,
            train,
            answered,
            out,
            split=infer.split,
            checkpoint_id=checkpoint_id,
            progress=lambda phase, n: bar.advance(tasks[phase], n),
        )
    where = ", ".join(f"{n} from the {source}" for source, n in sorted(sources.items()))
    stdout.print(f"wrote {path} ({sum(sources.values())} answers: {where})")


@app.command("evaluate")
@settings_options("infer.profile", "infer.bertscore", "infer.bootstrap_resamples", "seed")
def evaluate_command(
    predictions: Annotated[Path, typer.Argument(help="predictions.jsonl from `infer generate`")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="folder (default: beside the predictions)")
    ] = None,
    *,
    infer: InferSettings,
    seed: int,
) -> None:
    """Score predictions: results.json (metrics with bootstrap intervals) and samples.jsonl (per item)."""
    from ecgbench.files import check_output
    from ecgbench.infer.evaluate import evaluate_items, read_predictions, write_evaluation

    out = out or predictions.parent
    check_output(out / "results.json", "--out", [predictions])
    items = read_predictions(predictions)
    _check_one_run(predictions, items)
    try:
        results, samples = evaluate_items(
            items,
            infer.profile,
            bertscore=infer.bertscore,
            resamples=infer.bootstrap_resamples,
            seed=seed,
            show_progress=True,
        )
    except UserError as exc:
        raise UserError(f"{predictions}: {exc}") from None
    results["predictions"] = str(predictions.resolve())
    results["checkpoint"] = items[0].get("checkpoint")
    results["decoding"] = items[0].get("decoding")
    written = write_evaluation(out, results, samples)
    stdout.print(_results_table(results))
    for note in results.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    stdout.print(f"wrote {written[0]} and {written[1]}")


def _check_one_run(path: Path, items: list[dict[str, Any]]) -> None:
    """The items of one predictions file come from one model and decoding (results.json records them once;
    a mix would score several runs as one). Mixed ECG modes are refused by evaluate_items."""
    for field in ("checkpoint", "decoding"):
        values = {json.dumps(item.get(field), sort_keys=True) for item in items}
        if len(values) > 1:
            raise UserError(
                f"{path} mixes predictions of {len(values)} different {field} values: "
                "evaluate each run's predictions.jsonl on its own"
            )


def _fmt(metric: dict[str, Any]) -> str:
    value = metric.get("value")
    if value is None:
        return "-"
    low, high = (metric.get("ci") or [None, None])[:2]
    return f"{value:.4f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def _results_table(results: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(
        title=f"{results['profile']} profile, ecg {results.get('ecg_mode')}, {results['n_items']} items"
    )
    table.add_column("metric")
    table.add_column("value [95% CI]", justify="right")
    for name, metric in results["metrics"].items():
        table.add_row(name, _fmt(metric))
    return table


def _run_samples(path: Path) -> tuple[Path, list[dict[str, Any]]]:
    from ecgbench.infer.evaluate import read_samples

    file = path / "samples.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no samples.jsonl at {path} (run `ecgbench infer evaluate` first)")
    return file, read_samples(file)


@app.command("compare")
@settings_options("infer.bootstrap_resamples", "seed")
def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="two or more evaluated folders (samples.jsonl)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write compare.json here")] = None,
    *,
    infer: InferSettings,
    seed: int,
) -> None:
    """Paired tests on the same items: McNemar for binary scores, paired bootstrap otherwise (Holm)."""
    from rich.table import Table

    from ecgbench.infer.evaluate import compare_samples

    if len(runs) < 2:
        raise UserError("give at least two evaluated runs to compare")
    loaded = [_run_samples(r) for r in runs]
    base_name, base = str(runs[0]), loaded[0][1]
    comparisons = {}
    for path, (_, samples) in zip(runs[1:], loaded[1:], strict=True):
        result = compare_samples(
            base, samples, names=(base_name, str(path)), resamples=infer.bootstrap_resamples, seed=seed
        )
        comparisons[str(path)] = result
        table = Table(title=f"{base_name} - {path} ({result['n_items']} paired items)")
        for column in ("metric", "a", "b", "a - b [95% CI]", "test", "p (Holm)"):
            table.add_column(column, justify="left" if column in ("metric", "test") else "right")
        for name, m in result["metrics"].items():
            ci = m.get("ci") or [None, None]
            diff = "-" if m.get("difference") is None else f"{m['difference']:+.4f}"
            if ci[0] is not None:
                diff += f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"
            p = m.get("p_holm")
            table.add_row(
                name,
                "-" if m.get("a") is None else f"{m['a']:.4f}",
                "-" if m.get("b") is None else f"{m['b']:.4f}",
                diff,
                str(m.get("test", "")),
                "-" if p is None else f"{p:.3g}",
            )
        stdout.print(table)
    if out is not None:
        from ecgbench.files import atomic_write

        out.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"base": base_name, "comparisons": comparisons}, indent=2)
        atomic_write(out / "compare.json", lambda tmp: tmp.write_text(body + "\n", encoding="utf-8"))
        stdout.print(f"wrote {out / 'compare.json'}")


@app.command("report")
@settings_options("infer.bootstrap_resamples", "seed")
def report_command(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="evaluated folders (results.json + samples.jsonl), or folders holding them such as the "
            "--out of `infer generate` (one sub-folder per ECG mode)"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for report.json and the PNG plots")],
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", help="metric of the per-question-type table and plots (repeatable)"),
    ] = None,
    *,
    infer: InferSettings,
    seed: int,
) -> None:
    """Runs side by side: metrics with intervals, per question type, ECG reliance; report.json and plots.

    Every run is tested against the first (paired, Holm-corrected); runs of one model under several
    ECG modes (one `infer generate --out`) give its ECG reliance: real minus each replaced mode.
    """
    from ecgbench.files import check_output
    from ecgbench.infer.report import build_report, find_runs, report_tables, write_report

    check_output(out, "--out")
    found, notes = find_runs(runs)
    report = build_report(found, metrics=metric, resamples=infer.bootstrap_resamples, seed=seed)
    report["notes"] = notes
    for table in report_tables(report):
        stdout.print(table)
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    written = write_report(report, out)
    stdout.print(f"wrote {', '.join(str(p) for p in written)}")
