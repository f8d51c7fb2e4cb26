"""Issue 7, ``data prepare --workers 2`` interrupted for real: Ctrl-C (SIGINT to the whole process group,
as a terminal sends it) prints the one clean line and no worker traceback, and ``kill -9`` of the main
process leaves no worker (and no resource tracker) behind. Every wait is bounded.

The corpus is the bundled CPSC 2018 record ``A0002`` (Challenge 2020 copy) listed 400 times: copies of
its header next to its one signal file, so the workers stay busy long enough to be caught."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecgbench.resources import SAMPLE_DIR

ECGBENCH = Path(sys.executable).parent / "ecgbench"
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


@pytest.fixture(scope="module")
def busy_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("busy")
    source = SAMPLE_DIR / "cpsc2018_cinc2020"
    shutil.copy(source / "A0002.mat", root / "A0002.mat")
    header = (source / "A0002.hea").read_text()
    for k in range(400):
        (root / f"r{k:03d}.hea").write_text(header)  # each names the same A0002.mat
    return root


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its entry waits to be reaped


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def start_busy_prepare(corpus: Path, out: Path) -> tuple[subprocess.Popen, list[int]]:
    """A prepare with two workers, returned once both workers have done their imports and work."""
    command = [str(ECGBENCH), "data", "prepare", "wfdb", "--root", str(corpus), "--out", str(out),
               "--workers", "2"]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        workers = [
            p for p in children(process.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        if len(workers) == 2 and all(cpu_seconds(p) > 1.5 for p in workers):
            return process, children(process.pid)
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"the workers never got going: {process.communicate()}")


def test_ctrl_c_with_two_workers_prints_one_clean_line(tmp_path, busy_corpus):
    process, kids = start_busy_prepare(busy_corpus, tmp_path / "store")
    os.killpg(process.pid, signal.SIGINT)  # the terminal sends Ctrl-C to every process of the group
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted: run the same command again to resume" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    deadline = time.monotonic() + 10
    while any(alive(p) for p in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in kids if alive(p)]
    assert not (tmp_path / "store" / ".lock").exists()


def test_kill_9_of_the_main_process_leaves_no_worker_behind(tmp_path, busy_corpus):
    process, kids = start_busy_prepare(busy_corpus, tmp_path / "store")
    assert len(kids) >= 2  # the two workers (and the resource tracker)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    deadline = time.monotonic() + 20
    while any(alive(p) for p in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in kids if alive(p)]
    for pid in left:  # do not leave them running if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the main process was killed: {left}"
