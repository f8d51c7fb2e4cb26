"""``ecgbench assets fetch | list``: the offline model assets (real vocabularies, WordNet, SmolLM2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ecgbench.commands import new_group
from ecgbench.console import stdout

app = new_group()

DirOption = Annotated[
    Path | None, typer.Option("--dir", help="asset directory (default: $ECGBENCH_ASSETS or the venv)")
]


@app.command("fetch")
def fetch_command(
    directory: DirOption = None,
    no_smollm2: Annotated[
        bool, typer.Option("--no-smollm2", help="skip the 98 MB SmolLM2-135M-Instruct weights")
    ] = False,
) -> None:
    """Download, verify and convert the offline tokenizers, WordNet and SmolLM2 (idempotent)."""
    from ecgbench.models import offline_assets
    from ecgbench.models.llm import smollm2_dir

    root = offline_assets.fetch(directory, include_smollm2=not no_smollm2)
    if not no_smollm2:
        smollm2_dir(root)  # dequantised once here, so the first model load does not pay for it
    stdout.print(str(root), markup=False, soft_wrap=True)


@app.command("list")
def list_command(directory: DirOption = None) -> None:
    """Each asset, where it lives and whether it is there with its pinned SHA-256."""
    from rich.table import Table

    from ecgbench.models import offline_assets

    root = offline_assets.assets_root(directory)
    table = Table(title=f"offline assets in {root}")
    for column in ("asset", "files", "status", "path"):
        table.add_column(column)
    missing = 0
    for name, assets in offline_assets.asset_groups().items():
        present = [a for a in assets if (root / a.relpath).is_file()]
        good = [a for a in present if offline_assets.verified(a, root)]
        if len(good) == len(assets):
            status = "[green]ok[/green]"
        elif len(present) > len(good):
            status = "[red]damaged[/red]"
        else:
            status = "[yellow]missing[/yellow]"
        missing += len(good) < len(assets)
        where = Path(assets[0].relpath) if len(assets) == 1 else Path(assets[0].relpath).parent
        table.add_row(name, f"{len(good)}/{len(assets)}", status, str(where))
    stdout.print(table)
    if missing:
        stdout.print(f"{missing} incomplete: run `{offline_assets.FETCH_COMMAND}`")
