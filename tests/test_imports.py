"""The package's import structure: no import cycles, and a command line that starts without heavy modules."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ecgbench.cli import GROUPS

SRC = Path(__file__).resolve().parents[1] / "src"
# Imported only when a command runs: `ecgbench --help`, `--version`, a group's help and shell completion
# must not pay for them.
HEAVY = ("torch", "transformers", "scipy", "pyarrow", "matplotlib", "sklearn", "numpy", "pandas")
# The one cycle left, being broken with the ELM processor rework (models/elm.py, models/checkpoint.py,
# models/processor.py); remove it from here when it is gone.
KNOWN_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "ecgbench").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports, at any depth of its code (imports inside functions hide cycles;
    ``if TYPE_CHECKING:`` blocks do not count, they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            # Importing one's own package (`ecgbench` from `ecgbench.x`) runs its __init__, no cycle of ours.
            if candidate and candidate != name and not name.startswith(candidate + "."):
                targets.add(candidate)
    return targets


def _cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    modules = _modules()
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "ecgbench.data.cli" in edges["ecgbench.data.cli"] | {"ecgbench.data.cli"}
    cycles = [sorted(c) for c in _cycles(edges) if c not in KNOWN_CYCLES]
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [{"a", "b", "c"}]
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "x.py").write_text("def f():\n    from pkg import y\n")
    (package / "y.py").write_text(
        "from . import x\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.z\n"
    )
    (package / "z.py").write_text("import pkg.y\n")
    modules = {"pkg": package / "__init__.py", **{f"pkg.{n}": package / f"{n}.py" for n in "xyz"}}
    found = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert found["pkg.x"] == {"pkg.y"} and found["pkg.y"] == {"pkg.x"} and found["pkg.z"] == {"pkg.y"}
    assert _cycles(found) == [{"pkg.x", "pkg.y"}]


_PROBE = """
import json, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["ecgbench", *json.loads(sys.argv[1])]
from ecgbench.cli import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("\\nHEAVY " + json.dumps([m for m in heavy if m in sys.modules]) + "\\n")
"""


def _heavy_imports(args: list[str], env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """The heavy modules that running ``ecgbench ARGS`` imported, and what it printed."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    marker = [line for line in result.stderr.splitlines() if line.startswith("HEAVY ")]
    assert marker, result.stderr
    return json.loads(marker[-1][len("HEAVY ") :]), result.stdout


STARTS = [["--version"], ["--help"], *([group, "--help"] for group in GROUPS)]


@pytest.mark.parametrize("args", STARTS, ids=" ".join)
def test_help_and_version_import_nothing_heavy(args: list[str]) -> None:
    heavy, printed = _heavy_imports(args)
    assert heavy == []
    assert printed.strip()


@pytest.mark.parametrize(
    "words", ["ecgbench ", "ecgbench da", "ecgbench data ", "ecgbench data prepare --", "ecgbench tokenizer "]
)
def test_shell_completion_imports_nothing_heavy(words: str) -> None:
    cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    env = {"_ECGBENCH_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}
    heavy, offered = _heavy_imports([], env)
    assert heavy == []
    assert offered.split(), "nothing was offered"


def test_completion_lists_every_group() -> None:
    env = {**os.environ, "_ECGBENCH_COMPLETE": "complete_bash", "COMP_WORDS": "ecgbench ", "COMP_CWORD": "1"}
    probe = "import sys; sys.argv = ['ecgbench']; from ecgbench.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False
    )
    assert result.stdout.split() == list(GROUPS)
