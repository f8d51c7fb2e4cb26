"""``ecgbench judge export``: preference sets for DPO from the demo's feedback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ecgbench.commands import new_group, out_option
from ecgbench.console import console, stdout
from ecgbench.errors import UserError

app = new_group()


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
