"""``ecgbench judge compare | rank | export``: preference sets for DPO from model judges or demo feedback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ecgbench.commands import new_group, out_option, settings_options
from ecgbench.console import console, stdout
from ecgbench.errors import UserError
from ecgbench.judge.judges.reference import METRICS  # names only: the metrics load when a judge scores
from ecgbench.settings import JudgeSettings

app = new_group()

JudgeOption = Annotated[
    str,
    typer.Option(
        "--judge",
        help=f"reference[:METRIC] ({', '.join(METRICS)}), llm:MODEL (llm:smollm2 offline) or reward:MODEL "
        "(a PairRM-style ranker)",
    ),
]
SETS_HELP = "the conversation sets the predictions answer (prompts with the earlier turns; repeatable)"


def _device(setting: str) -> str:
    if setting == "cpu":
        return setting
    import torch

    if setting == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this machine has no CUDA device torch can use")
    return "cuda" if torch.cuda.is_available() else "cpu"


def _judge_and_write(
    kind: str, files: list[Path], sets: list[Path] | None, judge_spec: str, out: Path, judge: JudgeSettings
) -> None:
    """Shared body of compare and rank: check the output, judge, write, report."""
    from ecgbench.console import progress
    from ecgbench.files import check_output
    from ecgbench.judge.export import check_preferences_path, write_preferences
    from ecgbench.judge.judges import load_judge
    from ecgbench.judge.judges.reference import ReferenceJudge
    from ecgbench.judge.pairs import compare_pairs, load_inputs, missing_references, rank_pairs, summary

    check_output(check_preferences_path(out), "--out", [*files, *(sets or [])])
    inputs = load_inputs(files, sets)  # bad inputs fail before a model loads
    loaded = load_judge(judge_spec, device=_device(judge.device), batch_size=judge.batch_size)
    if isinstance(loaded, ReferenceJudge) and (missing := missing_references(inputs)):
        raise UserError(
            f"the {loaded.id} judge needs a gold answer, and {missing} of {len(inputs.matched.keys)} "
            f"questions in {files[0]} have none: use an llm: or reward: judge"
        )
    run = compare_pairs if kind == "compare" else rank_pairs
    with progress(transient=True) as bar:
        task = bar.add_task(f"judging ({loaded.id})", total=None)
        result = run(
            inputs,
            loaded,
            on_disagreement=judge.on_disagreement,
            progress=lambda done, total: bar.update(task, total=total, advance=done),
        )
    if not result.rows:
        left = ", ".join(f"{n} {reason}" for reason, n in sorted(result.left_out.items()) if n)
        raise UserError(
            f"no preference pairs from {', '.join(map(str, files))} ({left or 'nothing judged'}): "
            "nothing written"
        )
    path = write_preferences(result.rows, out)
    stdout.print(summary(result, path, loaded), soft_wrap=True)


@app.command("compare")
@settings_options("judge")
def compare_command(
    pred_a: Annotated[Path, typer.Argument(help="predictions.jsonl of model A (`infer generate`)")],
    pred_b: Annotated[Path, typer.Argument(help="predictions.jsonl of model B, on the same questions")],
    judge_spec: JudgeOption,
    out: Annotated[Path, out_option("preference set to write (.parquet)")],
    sets: Annotated[list[Path] | None, typer.Option("--sets", help=SETS_HELP)] = None,
    *,
    judge: JudgeSettings,
) -> None:
    """Judge two runs' answers to the same questions, each pair in both orders; the preferred answer of
    each question becomes a (chosen, rejected) pair in trl's DPO layout. Ties, disagreements between the
    two orders and unparsable verdicts give no pair (counted).

    Without --sets the prompt is the question alone (first turns only)."""
    _judge_and_write("compare", [pred_a, pred_b], sets, judge_spec, out, judge)


@app.command("rank")
@settings_options("judge")
def rank_command(
    predictions: Annotated[
        list[Path], typer.Argument(help="predictions.jsonl files (2 or more) on the same questions")
    ],
    judge_spec: JudgeOption,
    out: Annotated[Path, out_option("preference set to write (.parquet)")],
    sets: Annotated[list[Path] | None, typer.Option("--sets", help=SETS_HELP)] = None,
    *,
    judge: JudgeSettings,
) -> None:
    """Rank N answers to each question (N runs, or N sampled decodings) by a round robin of pairwise
    verdicts, both orders each; the best and the worst answer become one pair (scores: win rates).

    Questions whose answers are all the same text, or all tied, give no pair (counted)."""
    _judge_and_write("rank", predictions, sets, judge_spec, out, judge)


@app.command("export")
def export_command(
    feedback: Annotated[list[Path], typer.Argument(help="feedback log(s) of `ecgbench demo` (.jsonl)")],
    out: Annotated[Path, out_option("preference set to write (.parquet)")],
) -> None:
    """Turn demo feedback into (prompt, chosen, rejected) pairs with their ECG, in trl's DPO layout."""
    from ecgbench.files import check_output
    from ecgbench.judge.export import check_preferences_path, export_feedback, write_preferences

    check_output(check_preferences_path(out), "--out", feedback)
    result = export_feedback(feedback)
    left_out = ", ".join(f"{n} {reason}" for reason, n in sorted(result.left_out.items()) if n)
    if not result.rows:
        raise UserError(f"no preference pairs in {', '.join(map(str, feedback))} ({left_out or 'empty'})")
    path = write_preferences(result.rows, out)
    kinds = {k: sum(r["kind"] == k for r in result.rows) for k in ("preference", "correction")}
    counts = f"{kinds['preference']} picks, {kinds['correction']} corrections"
    stdout.print(
        f"wrote {path}: {len(result.rows)} pairs ({counts})" + (f"; left out {left_out}" if left_out else ""),
        soft_wrap=True,
    )
    if result.missing_ecgs:
        console.print(
            f"[yellow]warning:[/yellow] {result.missing_ecgs} pairs name an ECG file that is missing "
            "(the ecgs/ folder beside the log was moved or deleted)",
            soft_wrap=True,
        )
