"""`ecgbench demo` on the command line: served on 127.0.0.1 unless told otherwise, a public link only after a
warning and a yes, flags reach the page, Ctrl-C stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import gradio_client
import pytest
from demo_helpers import PTBXL, Runs, free_port
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.errors import UserError

runner = CliRunner()
START_S = 240  # loading torch, transformers, gradio and the model on a busy machine


@pytest.mark.parametrize("answer", ["n\n", ""], ids=["no", "no-input"])
def test_share_needs_a_yes_after_the_warning(answer: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--checkpoint", str(tmp_path / "run"), "--share"], input=answer)
    assert result.exit_code == 2
    text = " ".join(result.stderr.split())
    assert "warning: --share opens a public link" in text and "would leave this machine" in text
    assert text.endswith("error: no share link opened (run without --share to serve on this machine only)")


def test_share_after_a_yes_asks_gradio_for_the_link(
    runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No link can be opened offline: stand in for gradio's launch and look at what it was asked."""
    import ecgbench.demo.app as demo_app

    asked: dict = {}

    def launch(blocks: Any, **options: Any) -> str:
        asked.update(options, header=blocks.config["components"])
        return "http://127.0.0.1:1/"

    monkeypatch.setattr(demo_app, "launch", launch)
    feedback = tmp_path / "fb" / "feedback.jsonl"
    args = ["demo", "--checkpoint", str(runs.encoder_free), "--share", "--feedback", str(feedback)]
    result = runner.invoke(app, [*args, "--device", "cpu"], input="y\n")
    assert result.exit_code == 0, result.output
    assert (asked["share"], asked["host"], asked["port"]) == (True, "127.0.0.1", None)
    header = next(c["props"]["value"] for c in asked["header"] if c["props"].get("elem_id") == "header")
    assert "A public share link is open: what you upload leaves this machine." in header


def test_other_hosts_are_warned_about(tmp_path: Path) -> None:
    feedback = tmp_path / "fb" / "feedback.jsonl"
    args = ["demo", "--checkpoint", str(tmp_path / "run"), "--host", "0.0.0.0", "--feedback", str(feedback)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2  # the checkpoint is missing: nothing was served, nothing written
    text = " ".join(result.stderr.split())
    assert "warning: serving on 0.0.0.0" in text and f"checkpoint not found: {tmp_path / 'run'}" in text
    assert not feedback.parent.exists()


def test_device_choice(tmp_path: Path) -> None:
    import torch

    from ecgbench.demo.app import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="cpu or cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    result = runner.invoke(app, ["demo", "--checkpoint", str(tmp_path), "--device", "gpu0"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --device 'gpu0' is not a device (auto, cpu, cuda or cuda:N)"


def listening_hosts(port: int) -> set[str]:
    """Addresses a TCP socket listens on at ``port``, from /proc/net/tcp{,6} (no traffic sent)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if len(address) == 8:
                    hosts.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    hosts.add("ipv6:" + address)
    return hosts


def test_the_command_serves_on_localhost_until_interrupted(runs: Runs, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [
        sys.executable, "-m", "ecgbench.cli", "demo", "--checkpoint", str(runs.encoder_free),
        "--port", str(port), "--feedback", str(tmp_path / "fb" / "feedback.jsonl"), "--max-new-tokens", "5",
        "--device", "cpu",
    ]  # fmt: skip
    # a cache of its own: another test's page (xdist) may hold a file of the same content hash in /tmp/gradio
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                with urllib.request.urlopen(url + "config", timeout=10) as response:
                    config = json.load(response)
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None:
                    pytest.fail(f"the demo exited with {process.returncode}: {process.stdout.read()}")
                if time.monotonic() > deadline:
                    pytest.fail("the demo did not start in time")
                time.sleep(0.5)
        assert listening_hosts(port) == {"127.0.0.1"}
        props = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
        assert props["max-new-tokens"]["value"] == 5  # --max-new-tokens reached the page
        assert "token ELM" not in props["header"]["value"] and "encoder-free ELM" in props["header"]["value"]
        assert "Served on this machine only (127.0.0.1)" in props["header"]["value"]
        files = [gradio_client.handle_file(str(PTBXL.with_suffix(s))) for s in (".hea", ".dat")]
        page = gradio_client.Client(url, verbose=False, download_files=False)
        _, plot, status, *_ = page.predict(files, None, "mV", "50", 0, api_name="/load_upload")
        cached = Path(plot["path"])  # in gradio's cache, like the uploaded files
        assert status.startswith("Loaded") and cached.is_file()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output and "Traceback" not in output
    assert output.rstrip().endswith("demo stopped")
    assert not cached.exists()  # gradio's cache of this page was emptied when it stopped
    assert (tmp_path / "fb").is_dir()
