"""src/ecgbench/_ecgbyte.pyi states the Rust extension exactly: the same classes, methods and argument names
(called here by keyword, optional ones left out), and results of the stated shapes."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from ecgbench import _ecgbyte

STUB = Path(_ecgbyte.__file__).with_name("_ecgbyte.pyi")
# One valid value per argument name the stub uses: a..f twice, cut into two pieces.
SYMBOLS = bytes([0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 1, 2])
ARGUMENTS = {
    "symbols": SYMBOLS,
    "pieces": [6, 6],
    "num_merges": 3,
    "min_count": 2,
    "keep_segmentation": True,
    "merges": [(0, 1), (26, 2)],
    "pieces_per_item": 1,
    "greedy": False,
    "ids": (26).to_bytes(4, "little") + (3).to_bytes(4, "little"),
}


def _stub_classes() -> dict[str, ast.ClassDef]:
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _required(function: ast.FunctionDef) -> list[str]:
    args = function.args.args[1:]  # without self
    return [a.arg for a in args[: len(args) - len(function.args.defaults)]]


def test_stub_names_what_the_extension_has() -> None:
    classes = _stub_classes()
    runtime = sorted(
        n for n in dir(_ecgbyte) if not n.startswith("_") and inspect.isclass(getattr(_ecgbyte, n))
    )
    assert sorted(classes) == runtime
    assert isinstance(_ecgbyte.__version__, str)
    for name, node in classes.items():
        stubbed = {f.name for f in node.body if isinstance(f, ast.FunctionDef) and f.name != "__init__"}
        public = {n for n in dir(getattr(_ecgbyte, name)) if not n.startswith("_")}
        assert stubbed == public, name


def test_stub_arguments_and_results_match_the_extension() -> None:
    classes = _stub_classes()
    objects = {}
    for name, node in classes.items():
        init = next(f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
        objects[name] = getattr(_ecgbyte, name)(**{a: ARGUMENTS[a] for a in _required(init)})
    for name, node in classes.items():
        for function in (f for f in node.body if isinstance(f, ast.FunctionDef) and f.name != "__init__"):
            attribute = getattr(objects[name], function.name)
            if any(isinstance(d, ast.Name) and d.id == "property" for d in function.decorator_list):
                result = attribute
            else:
                result = attribute(**{a: ARGUMENTS[a] for a in _required(function)})
                if "threads" in [a.arg for a in function.args.args]:
                    assert attribute(**{a: ARGUMENTS[a] for a in _required(function)}, threads=1) == result
            returns = ast.unparse(function.returns)
            if returns.startswith("tuple["):
                assert isinstance(result, tuple)
                assert len(result) == len(function.returns.slice.elts), (name, function.name)
            else:
                kind = {"int": int, "bytes": bytes, "list[bytes]": list, "None": type(None)}[returns]
                assert isinstance(result, kind), (name, function.name, result)
