"""Shared terminal output: one stderr console and one progress-bar style for every long loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

# Results go to stdout (so they can be piped); progress, warnings and errors go to stderr.
console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)


def progress(transient: bool = False) -> Progress:
    """A rich progress bar with counts, rate-free ETA and elapsed time."""
    # Imported here: the CLI's help and completion never show a progress bar.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )
