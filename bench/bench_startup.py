"""Start-up time of the command line: ``ecgbench --version`` and ``ecgbench data --help`` beside the floor
every Typer CLI pays, ``python -c "import typer, rich"``.

Each command runs in a fresh interpreter (as a shell would start it), several times; the median wall time
is printed with its ratio to the baseline. The goal (issue 8): at most 3x the baseline.

    python bench/bench_startup.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _ecgbench() -> list[str]:
    # The console script of this interpreter's environment (what a user types), else the module.
    script = Path(sys.executable).parent / "ecgbench"
    if script.is_file():
        return [str(script)]
    found = shutil.which("ecgbench")
    return [found] if found else [sys.executable, "-m", "ecgbench.cli"]


def median_seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    ecgbench = _ecgbench()
    cases = {
        'python -c "import typer, rich"': [sys.executable, "-c", "import typer, rich"],
        "ecgbench --version": [*ecgbench, "--version"],
        "ecgbench data --help": [*ecgbench, "data", "--help"],
    }
    # One untimed run of each first: byte-compiled files and the page cache are warm for every case.
    for argv in cases.values():
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    baseline = None
    print(f"{'command':<34} {'median s':>9} {'x baseline':>11}   ({args.repeats} runs each)")
    for name, argv in cases.items():
        seconds = median_seconds(argv, args.repeats)
        baseline = baseline or seconds
        print(f"{name:<34} {seconds:>9.3f} {seconds / baseline:>10.2f}x")


if __name__ == "__main__":
    main()
