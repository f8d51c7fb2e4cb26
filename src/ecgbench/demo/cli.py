"""``ecgbench demo``: chat with trained ELMs about an ECG in the browser and collect preferences.

The page is served on this machine only (127.0.0.1) unless told otherwise; a public share link needs
``--share`` and a yes to the question that follows it, since every ECG uploaded would then pass through
a third party's relay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ecgbench.commands import settings_options
from ecgbench.console import console
from ecgbench.demo import DEFAULT_MAX_UPLOAD_MB
from ecgbench.errors import UserError
from ecgbench.settings import InferSettings

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_FEEDBACK = Path("demo-feedback") / "feedback.jsonl"
SHARE_WARNING = (
    "--share opens a public link through gradio's relay servers: every ECG uploaded to the page, every "
    "question and every answer would leave this machine. Do not use it with clinical data unless your "
    "data-protection rules allow it."
)


def confirm_share() -> None:
    """The warning, then a yes/no question (no means no link, and no demo)."""
    console.print(f"[bold red]warning:[/bold red] {SHARE_WARNING}", soft_wrap=True)
    try:
        agreed = typer.confirm("Open a public share link anyway?", default=False, err=True)
    except typer.Abort:
        agreed = False
    if not agreed:
        raise UserError("no share link opened (run without --share to serve on this machine only)")


@settings_options(
    "infer.max_new_tokens", "infer.do_sample", "infer.temperature", "infer.top_p", "infer.top_k", "seed"
)
def demo_command(
    checkpoint: Annotated[
        Path,
        typer.Option("--checkpoint", help="a training run folder (its best checkpoint) or an ELM checkpoint"),
    ],
    checkpoint_b: Annotated[
        Path | None,
        typer.Option("--checkpoint-b", help="a second one: both answer side by side, the user picks"),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="address to serve on (other than localhost: the whole network)")
    ] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="port (default: the first free one from 7860)"),
    ] = None,
    share: Annotated[
        bool,
        typer.Option("--share", help="also open a public share link (asks first: data leaves the machine)"),
    ] = False,
    store: Annotated[
        list[Path] | None,
        typer.Option(
            "--store",
            help="segment store to pick records from and take signal settings from "
            "(repeatable; default: the stores the runs trained on)",
        ),
    ] = None,
    feedback: Annotated[
        Path, typer.Option("--feedback", help="JSONL log the judgements are appended to")
    ] = DEFAULT_FEEDBACK,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="largest upload accepted, in MB")
    ] = DEFAULT_MAX_UPLOAD_MB,
    device: Annotated[
        str, typer.Option("--device", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    ] = "auto",
    *,
    infer: InferSettings,
    seed: int,
) -> None:
    """Chat with one ELM (or two side by side) about an uploaded or stored ECG; rate or compare answers."""
    if share:
        confirm_share()
    if host not in LOOPBACK_HOSTS:
        console.print(
            f"[yellow]warning:[/yellow] serving on {host}: whoever can reach this machine can open the page",
            soft_wrap=True,
        )
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the demo needs gradio: pip install 'ecgbench-elm[demo]'") from None
    from ecgbench.demo.app import DemoApp, launch, load_demo_model, resolve_device
    from ecgbench.demo.feedback import FeedbackLog
    from ecgbench.files import check_output
    from ecgbench.infer.generate import Decoding

    check_output(feedback, "--feedback", [checkpoint, checkpoint_b, *(store or [])])
    on = resolve_device(device)
    with console.status(f"loading the model(s) on {on}"):
        models = [load_demo_model(checkpoint, "a", stores=store, device=on)]
        if checkpoint_b is not None:
            models.append(load_demo_model(checkpoint_b, "b", stores=store, device=on))
    log = FeedbackLog(feedback)  # its folder is made only once the models are there
    decoding = Decoding(
        max_new_tokens=infer.max_new_tokens,
        do_sample=infer.do_sample,
        temperature=infer.temperature,
        top_p=infer.top_p,
        top_k=infer.top_k,
        seed=seed,
    )
    app = DemoApp(models, log, decoding=decoding, max_upload_mb=max_upload_mb, stores=store)
    notice = (
        "A public share link is open: what you upload leaves this machine."
        if share
        else f"Served on this machine only ({host}): nothing you upload leaves it."
        if host in LOOPBACK_HOSTS
        else f"Served on {host}, open to the network."
    )
    blocks = app.build(notice=notice)
    try:
        launch(blocks, host=host, port=port, share=share, max_upload_mb=max_upload_mb)
    except KeyboardInterrupt:  # Ctrl-C before gradio's own wait loop took over: stop all the same
        pass
    finally:
        blocks.close(verbose=False)
        app.close()
    console.print("demo stopped")
