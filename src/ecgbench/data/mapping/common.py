"""What every source mapper shares: the mapping report, store look-up, path rules, turn clean-up."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from ecgbench.data.conversations import ECG_PLACEHOLDER, Conversation, EcgRef
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import require_file

# LLaVA-style sources (PULSE, GEM) mark the picture with <image>; ours is <ecg> everywhere.
_FOREIGN_PLACEHOLDERS = ("<image>",)
_ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass
class MappingReport:
    """Counts of what happened to each source item: mapped, repaired (and how), skipped (and why)."""

    source: str
    items: int = 0
    mapped: int = 0
    repaired: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    _pending: Counter[str] = field(default_factory=Counter, repr=False)

    def repair(self, reason: str) -> None:
        """Note a repair of the current item; it counts only if the item is mapped in the end."""
        self._pending[reason] += 1

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1
        self._pending.clear()

    def commit(self) -> None:
        self.mapped += 1
        self.repaired.update(self._pending)
        self._pending.clear()

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "mapped": self.mapped,
            "repaired": dict(self.repaired),
            "skipped": dict(self.skipped),
        }


class SkipItem(Exception):
    """Raised inside a mapper to skip the current item with a counted reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RecordLookup:
    """Which (corpus, record_id) pairs a segment store holds, and where their source files were."""

    def __init__(self, index: pa.Table):
        corpora = index.column("corpus").to_pylist()
        records = index.column("record_id").to_pylist()
        paths = index.column("source_path").to_pylist()
        self.records: set[tuple[str, str]] = set(zip(corpora, records, strict=True))
        self._by_source_path: dict[str, tuple[str, str]] = {}
        for corpus, record_id, path in zip(corpora, records, paths, strict=True):
            if path:
                self._by_source_path[_strip_suffixes(path)] = (corpus, record_id)

    @classmethod
    def from_stores(cls, indexes: Iterable[pa.Table]) -> RecordLookup:
        tables = [t.select(["corpus", "record_id", "source_path"]) for t in indexes]
        return cls(pa.concat_tables(tables))

    def __contains__(self, ref: EcgRef) -> bool:
        return (ref.corpus, ref.record_id) in self.records

    def by_source_path(self, path: str) -> EcgRef | None:
        """The store record whose source path is a suffix of ``path`` (longest suffix wins)."""
        parts = PurePosixPath(_strip_suffixes(path)).parts
        for start in range(len(parts)):
            hit = self._by_source_path.get("/".join(parts[start:]))
            if hit:
                return EcgRef(*hit)
        return None

    def resolve_path(self, path: str) -> EcgRef:
        """A source's ECG or image path as a store record; SkipItem if unknown or not in the store."""
        ref = ref_from_path(path) or self.by_source_path(path)
        if ref is None:
            raise SkipItem("unresolvable ECG path")
        return self.require(ref)

    def require(self, ref: EcgRef) -> EcgRef:
        if ref not in self:
            raise SkipItem("ECG not in store")
        return ref


def _strip_suffixes(path: str) -> str:
    """Drop the extension and an image variant suffix: ``.../07190_hr-0.png`` -> ``.../07190_hr``."""
    path = path.replace("\\", "/").strip().strip("/")
    path = re.sub(r"\.(png|jpe?g|hea|dat|mat|npy|xml|json|svg)$", "", path, flags=re.IGNORECASE)
    return re.sub(r"-\d+$", "", path)


_MIMIC = re.compile(r"(?:^|/)s(\d+)/(\d+)$")
_PTBXL = re.compile(r"^(\d{5})_(?:hr|lr)$")
_CPSC = re.compile(r"^(A\d{4})$")
_CSN = re.compile(r"^(JS\d{5})$")
_DIGITS = re.compile(r"^(\d+)$")


def ref_from_path(path: str) -> EcgRef | None:
    """(corpus, record_id) from the path conventions of the published sets, or None.

    - MIMIC-IV-ECG: ``[mimic-iv/]files/p1000/p10000032/s40689238/40689238`` (ECG-Chat, GEM) or
      ``mimic_v4/p1000/p10000032/s40689238/40689238-0.png`` (PULSE): the study id.
    - PTB-XL: a file named ``07190_hr`` / ``07190_lr`` (PTB-XL, PULSE ``ptb-xl/``, ECG-Bench
      ``ptb_test_v4/``, GEM ``ecg_ptbxl_benchmarking/...``): the ecg_id without leading zeros.
    - CPSC 2018 ``A0001``, Chapman-Shaoxing-Ningbo ``JS00666``.
    - CODE-15%: a numeric file name under a folder whose name starts with ``code15``/``cod15``: the exam id.
    """
    stem_path = _strip_suffixes(path)
    parts = PurePosixPath(stem_path).parts
    if not parts:
        return None
    name = parts[-1]
    mimic = _MIMIC.search(stem_path)
    if mimic and mimic.group(1) == mimic.group(2):
        return EcgRef("mimic", mimic.group(2))
    if m := _PTBXL.match(name):
        return EcgRef("ptbxl", str(int(m.group(1))))
    if m := _CPSC.match(name):
        return EcgRef("cpsc", m.group(1))
    if m := _CSN.match(name):
        return EcgRef("csn", m.group(1))
    folders = [p.lower() for p in parts[:-1]]
    if (m := _DIGITS.match(name)) and any(f.startswith(("code15", "cod15", "code-15")) for f in folders):
        return EcgRef("code15", str(int(m.group(1))))
    if (m := _DIGITS.match(name)) and any(f.startswith("mimic") for f in folders):
        return EcgRef("mimic", str(int(m.group(1))))
    return None


def map_items(
    items: Iterable[Any], build: Callable[[Any], Conversation], report: MappingReport
) -> Iterator[Conversation]:
    """``build`` each item; a SkipItem is counted with its reason and the item left out."""
    for item in items:
        report.items += 1
        try:
            conversation = build(item)
        except SkipItem as skip:
            report.skip(skip.reason)
            continue
        report.commit()
        yield conversation


def map_file_items(
    path: Path, items: Iterable[Any], build: Callable[[Any, str], Conversation], report: MappingReport
) -> Iterator[Conversation]:
    """``map_items`` over the items of one source file; ``build`` gets each item and the id it falls back
    on when the item has none: ``<file stem>:<position>``."""
    numbered = enumerate(items)
    return map_items(numbered, lambda pair: build(pair[1], f"{path.stem}:{pair[0]}"), report)


def item_id(item: dict[str, Any], fallback_id: str) -> str:
    """The item's own ``id`` as a string, or the fallback when it has none (absent, null or empty); an id
    that is neither a string nor an integer (true, 3.5, a list) is a malformed item, not coerced."""
    value = item.get("id")
    if value is None or value == "":
        return fallback_id
    if type(value) not in (str, int):
        raise SkipItem("malformed item id")
    return str(value)


def _turn_text(value: Any, report: MappingReport) -> str:
    if isinstance(value, str):
        return value
    # Some published items store a turn as a list of single characters (PULSE ECGBench ecgqa-test).
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if all(len(v) <= 1 for v in value):
            report.repair("turn stored as list of characters")
            return "".join(value)
        raise SkipItem("turn stored as list of strings")
    raise SkipItem("malformed turn")


def normalise_turns(raw: Any, n_ecgs: int, report: MappingReport) -> list[dict[str, str]]:
    """Source turns as [{"role", "content"}] with exactly ``n_ecgs`` ``<ecg>`` placeholders.

    Repairs what has one reading (list-of-characters turns, a trailing unanswered question, placeholders
    missing or repeated for a single ECG) and raises SkipItem for the rest.
    """
    if not isinstance(raw, list) or not raw:
        raise SkipItem("no turns")
    turns: list[dict[str, str]] = []
    for turn in raw:
        if not isinstance(turn, dict):
            raise SkipItem("malformed turn")
        role_name = turn.get("from", turn.get("role"))
        role = _ROLE_NAMES.get(str(role_name).lower()) if role_name is not None else None
        if role is None:
            raise SkipItem("unknown turn role")
        content = _turn_text(turn.get("value", turn.get("content")), report)
        for foreign in _FOREIGN_PLACEHOLDERS:
            content = content.replace(foreign, ECG_PLACEHOLDER)
        turns.append({"role": role, "content": content.strip()})
    if turns[0]["role"] == "system":
        system, dialogue = turns[:1], turns[1:]
    else:
        system, dialogue = [], turns
    if dialogue and dialogue[-1]["role"] == "user":
        dialogue = dialogue[:-1]
        report.repair("unanswered last question dropped")
    if not dialogue:
        raise SkipItem("no question and answer")
    for i, turn in enumerate(dialogue):
        if turn["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise SkipItem("turns do not alternate user/assistant")
        if turn["role"] == "assistant" and not turn["content"]:
            raise SkipItem("empty answer")
        if turn["role"] == "user" and not turn["content"]:
            raise SkipItem("empty question")
    _place_ecgs(dialogue, n_ecgs, report)
    return system + dialogue


def _place_ecgs(dialogue: list[dict[str, str]], n_ecgs: int, report: MappingReport) -> None:
    found = sum(t["content"].count(ECG_PLACEHOLDER) for t in dialogue if t["role"] == "user")
    if found == n_ecgs:
        return
    if found == 0:
        # Sources that never mark the ECG (ECG-Bench eval files): it precedes the first question.
        dialogue[0]["content"] = f"{ECG_PLACEHOLDER}\n" * n_ecgs + dialogue[0]["content"]
        return
    if n_ecgs == 1:
        # One ECG, several marks: keep the first, drop the rest (LLaVA data sometimes repeats <image>).
        seen = False
        for turn in dialogue:
            if turn["role"] != "user":
                continue
            pieces = turn["content"].split(ECG_PLACEHOLDER)
            text = pieces[0]
            for piece in pieces[1:]:
                text += (ECG_PLACEHOLDER if not seen else "") + piece
                seen = True
            turn["content"] = re.sub(r"\n{2,}", "\n", text).strip()
        report.repair("repeated ECG placeholder removed")
        return
    raise SkipItem("ECG placeholders do not match the ECGs")


def load_json_items(path: Path) -> list[Any]:
    """A JSON file holding a list of items (one clear error if missing or not JSON)."""
    require_file(path, "source file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path} is not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise CorruptFileError(f"{path}: expected a JSON list of items, found {type(data).__name__}")
    return data


def json_files(source: Path, patterns: Sequence[str] = ("*.json",)) -> list[Path]:
    """``source`` itself if it is a file, else the files under it matching ``patterns`` (sorted)."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise UserError(f"source not found: {source}")
    files = sorted({p for pattern in patterns for p in source.glob(pattern) if p.is_file()})
    if not files:
        raise UserError(f"no {' or '.join(patterns)} files under {source}")
    return files
