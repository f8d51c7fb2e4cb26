"""The one data path: conversation set(s) + segment store(s) + split -> (id, turns, ECG arrays).

Training, DPO, inference, judging and the demo all read conversations through
:class:`ConversationDataset`; the weight-free processor (``ecgbench.models.processor``) then turns an
item into a training example or a generation prompt.

It is built for sets of millions of conversations: opening reads only the columns an item needs and
keeps them as Arrow buffers (no Python object per conversation), resolves every ECG reference to a
segment with one vectorised join against the stores' record tables (:class:`RecordIndex`, keyed by
``(corpus, record_id)``), and an item is materialised only when asked for, straight from the buffers
(a pyarrow scalar per value would cost more than the rest of the item). A conversation refers to
records; it reads the first segment of each (the one the question was asked about when a record spans
one segment).

Both classes pickle, so spawned DataLoader workers receive them: the stores travel as their paths and
are reopened in the worker (a store's memory-mapped shards must never be copied into a pickle).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecgbench.data.conversations import SPLITS, EcgRef, read_conversation_set
from ecgbench.data.store import MANIFEST, SegmentStore
from ecgbench.errors import UserError
from ecgbench.files import sha256_file

_SEP = "\x1f"  # joins corpus and record id into one key; cannot occur in either
#: the columns an item is made of (the rest of a set, e.g. its meta JSON, is not read)
ITEM_COLUMNS = ("conversation_id", "source", "turns", "ecgs", "question_type", "answer_options", "split")


def _keys(corpus: pa.Array, record_id: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(corpus, record_id, _SEP)


def _list_values(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """A list array as (offsets from 0, the values they index); a null list reads as an empty one.

    (``ListArray.flatten`` skips null lists, and ``StructArray.field`` ignores a slice offset: both
    would misalign the offsets with the values.)"""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        array = pc.fill_null(array, pa.scalar([], type=array.type))
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    return offsets - offsets[0], values


def _fields(struct: pa.StructArray) -> dict[str, pa.Array]:
    """The child arrays of a struct array, aligned with it (slice offset applied)."""
    return dict(zip((f.name for f in struct.type), struct.flatten(), strict=True))


class _Strings:
    """Random access to an Arrow string array, decoded straight from its buffers (memoryviews: their
    items are Python ints and their slices need no copy)."""

    __slots__ = ("array", "data", "null", "offsets")

    def __init__(self, array: pa.Array):
        if not pa.types.is_string(array.type):
            array = array.cast(pa.string())
        self.array = array  # holds the buffers
        _, offsets, data = array.buffers()
        self.offsets = memoryview(
            np.frombuffer(offsets, dtype=np.int32)[array.offset : array.offset + len(array) + 1]
            if len(array)
            else np.zeros(1, dtype=np.int32)
        )
        self.data = memoryview(data) if data is not None else memoryview(b"")
        self.null = pc.is_null(array).to_numpy(zero_copy_only=False) if array.null_count else None

    def __getitem__(self, j: Any) -> str | None:
        if self.null is not None and self.null[j]:
            return None
        return str(self.data[self.offsets[j] : self.offsets[j + 1]], "utf-8")


class RecordIndex:
    """Where each record of one or more segment stores lives: ``(corpus, record_id)`` -> segments.

    A key held by two stores is ambiguous and refused, so a mixed store list can never silently
    serve the wrong ECG.
    """

    def __init__(self, stores: Sequence[SegmentStore]):
        if not stores:
            raise UserError("give at least one --store")
        self.stores = list(stores)
        keys, store_no, first, count = [], [], [], []
        for number, store in enumerate(self.stores):
            index = store.index.select(["corpus", "record_id", "segment_id"])
            grouped = index.group_by(["corpus", "record_id"], use_threads=False).aggregate(
                [("segment_id", "min"), ("segment_id", "count")]
            )
            keys.append(_keys(grouped.column("corpus"), grouped.column("record_id")).combine_chunks())
            store_no.append(np.full(grouped.num_rows, number, dtype=np.int32))
            first.append(grouped.column("segment_id_min").to_numpy().astype(np.int64))
            count.append(grouped.column("segment_id_count").to_numpy().astype(np.int64))
        self.keys = pa.concat_arrays(keys)
        self.store_no = np.concatenate(store_no)
        self.first_segment = np.concatenate(first)
        self.segment_count = np.concatenate(count)
        self._rows: dict[str, int] | None = None
        self._views()
        if pc.count_distinct(self.keys).as_py() != len(self.keys):
            counts = pc.value_counts(self.keys)
            duplicated = counts.filter(pc.greater(counts.field("counts"), 1))
            corpus, record = duplicated[0]["values"].as_py().split(_SEP)
            holders = [str(self.stores[int(n)].path) for n in self.store_no[self._where(corpus, record)]]
            raise UserError(
                f"record {corpus}/{record} is in more than one --store ({', '.join(holders)}); "
                "give each record once"
            )

    def _views(self) -> None:
        # read() runs once per ECG of every item: index memoryviews (Python ints), not numpy arrays
        self._store_of = memoryview(self.store_no)
        self._first_of = memoryview(self.first_segment)

    @classmethod
    def open(cls, paths: Sequence[str | Path]) -> RecordIndex:
        return cls([SegmentStore.open(p) for p in paths])

    def __len__(self) -> int:
        return len(self.keys)

    def _where(self, corpus: str, record_id: str) -> np.ndarray:
        same = pc.equal(self.keys, f"{corpus}{_SEP}{record_id}")
        return np.flatnonzero(same.to_numpy(zero_copy_only=False))

    def locate(self, corpus: pa.Array, record_id: pa.Array) -> np.ndarray:
        """Row in this index of each (corpus, record_id), -1 where no store holds it."""
        found = pc.index_in(_keys(corpus, record_id), value_set=self.keys)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def row(self, ref: EcgRef) -> int | None:
        """The row of one record (None if no store holds it); the first call builds a dictionary."""
        if self._rows is None:
            self._rows = {key: row for row, key in enumerate(self.keys.to_pylist())}
        return self._rows.get(f"{ref.corpus}{_SEP}{ref.record_id}")

    def __contains__(self, ref: EcgRef) -> bool:
        return self.row(ref) is not None

    def read(self, row: int) -> np.ndarray:
        """The first segment of the record at ``row``, float32 (12, seg_len) mV."""
        return self.stores[self._store_of[row]].read(self._first_of[row])

    def check_shapes(self) -> tuple[int, int]:
        """(seg_len, fs) shared by every store; a mix of shapes cannot feed one ELM."""
        shapes = {(s.seg_len, s.fs) for s in self.stores}
        if len(shapes) > 1:
            listed = ", ".join(f"{s.path}: {s.seg_len} samples at {s.fs} Hz" for s in self.stores)
            raise UserError(f"the stores have different segment shapes ({listed}); prepare them alike")
        return shapes.pop()

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not isinstance(v, memoryview)}
        state["stores"] = [str(s.path) for s in self.stores]  # reopened, never the mapped shards
        state["_rows"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["stores"] = [SegmentStore.open(p) for p in state["stores"]]
        self.__dict__.update(state)
        self._views()


@dataclass(frozen=True)
class ConversationItem:
    """One conversation with its ECGs read from the store."""

    conversation_id: str
    source: str
    turns: list[dict[str, str]]
    ecgs: list[np.ndarray]
    ecg_refs: list[EcgRef]
    question_type: str | None
    answer_options: list[str]
    split: str | None


class _SetRows:
    """The item columns of a block of conversation-set rows (one record batch as Parquet read it, so
    nothing is copied into one contiguous table), read row by row straight from the Arrow buffers."""

    def __init__(self, batch: pa.RecordBatch, ecg_rows: np.ndarray):
        self.batch = batch
        self.ecg_rows = ecg_rows  # RecordIndex row of each ECG reference, in reference order
        self.ids = _Strings(batch.column("conversation_id"))
        self.sources = _Strings(batch.column("source"))
        self.types = _Strings(batch.column("question_type"))
        self.splits = _Strings(batch.column("split"))
        self.option_offsets, options = _list_values(batch.column("answer_options"))
        self.options = _Strings(options)
        self.turn_offsets, turns = _list_values(batch.column("turns"))
        turn_fields = _fields(turns)
        self.roles = _Strings(turn_fields["role"])
        self.contents = _Strings(turn_fields["content"])
        self.ecg_offsets, ecgs = _list_values(batch.column("ecgs"))
        ecg_fields = _fields(ecgs)
        self.ecg_corpus = _Strings(ecg_fields["corpus"])
        self.ecg_record = _Strings(ecg_fields["record_id"])
        # what an item reads, as memoryviews (their items are Python ints)
        self._turns_at = memoryview(self.turn_offsets)
        self._ecgs_at = memoryview(self.ecg_offsets)
        self._options_at = memoryview(self.option_offsets)
        self._record_of = memoryview(self.ecg_rows)

    @classmethod
    def located(cls, batch: pa.RecordBatch, records: RecordIndex) -> _SetRows:
        """The rows with each ECG reference looked up in ``records`` (-1: in no store)."""
        _, refs = _list_values(batch.column("ecgs"))
        fields = _fields(refs)
        return cls(batch, records.locate(fields["corpus"], fields["record_id"]))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_SetRows, (self.batch, self.ecg_rows))  # the buffer views are rebuilt, not pickled

    def __len__(self) -> int:
        return self.batch.num_rows

    def first_missing(self, selected: np.ndarray) -> tuple[int, int, int] | None:
        """(row, reference, count) of the first selected row's ECG reference in no store, with the
        number of such references; None if every selected row's ECGs were found."""
        owners = np.repeat(np.arange(len(self)), np.diff(self.ecg_offsets))
        missing = np.flatnonzero((self.ecg_rows < 0) & selected[owners])
        if not missing.size:
            return None
        return int(owners[missing[0]]), int(missing[0]), int(missing.size)

    def turns(self, row: int) -> list[dict[str, str]]:
        roles, contents = self.roles, self.contents
        return [
            {"role": roles[k], "content": contents[k]}
            for k in range(self._turns_at[row], self._turns_at[row + 1])
        ]

    def ecg_refs(self, row: int) -> list[EcgRef]:
        corpus, record = self.ecg_corpus, self.ecg_record
        return [EcgRef(corpus[k], record[k]) for k in range(self._ecgs_at[row], self._ecgs_at[row + 1])]

    def ecgs(self, row: int, records: RecordIndex) -> list[np.ndarray]:
        return [records.read(self._record_of[k]) for k in range(self._ecgs_at[row], self._ecgs_at[row + 1])]

    def answer_options(self, row: int) -> list[str]:
        options = self.options
        return [options[k] for k in range(self._options_at[row], self._options_at[row + 1])]

    def text_chars(self) -> np.ndarray:
        """Characters of all turns of each row."""
        chars = pc.fill_null(pc.utf8_length(self.contents.array), 0).to_numpy(zero_copy_only=False)
        cumulative = np.concatenate(([0], np.cumsum(chars, dtype=np.int64)))
        return cumulative[self.turn_offsets[1:]] - cumulative[self.turn_offsets[:-1]]


class ConversationDataset:
    """Conversations of one or more sets, restricted to a split, with their ECGs from the stores.

    ``splits`` (a ``splits.parquet`` from ``data split``) places each conversation by its ECGs' records;
    without it the sets' own ``split`` column is used. ``weights`` (one per set) mixes sets: a weight
    of 2 repeats a set twice, 0.5 keeps a seeded half, drawn once from ``seed``. ``order`` maps a
    position to a row of the sets (their selected rows one after the other); a caller may shorten it.
    """

    def __init__(
        self,
        sets: Sequence[str | Path],
        stores: RecordIndex | Sequence[str | Path],
        *,
        split: str | None = None,
        splits: str | Path | None = None,
        weights: Sequence[float] | None = None,
        seed: int = 0,
    ):
        if not sets:
            raise UserError("give at least one --sets conversation set")
        if split is not None and split not in SPLITS:
            raise UserError(f"invalid split {split!r} (allowed: {', '.join(SPLITS)})")
        if weights is not None and (
            len(weights) != len(sets) or any(not (math.isfinite(w) and w > 0) for w in weights)
        ):
            raise UserError(f"give one positive weight per set ({len(sets)} sets, weights {list(weights)})")
        self.records = stores if isinstance(stores, RecordIndex) else RecordIndex.open(stores)
        self.split = split
        self.sources = [str(p) for p in sets]
        split_table = _record_splits(Path(splits)) if splits is not None else None
        self._blocks: list[_SetRows] = []
        selected = []  # per set: the global row numbers in the split
        for path in sets:
            first = sum(len(b) for b in self._blocks)
            blocks, rows = self._open_set(Path(path), split, split_table, splits)
            self._blocks += blocks
            selected.append(rows + first)
        #: first global row of each block, for bisect (over a Python list: cheaper than numpy's)
        self._starts = np.cumsum([0] + [len(b) for b in self._blocks]).tolist()
        self.order = self._mixed_order(selected, weights, seed, self.sources)

    # ------------------------------------------------------------------ opening

    def _open_set(
        self,
        path: Path,
        split: str | None,
        split_table: tuple[pa.Array, pa.Array] | None,
        splits_path: str | Path | None,
    ) -> tuple[list[_SetRows], np.ndarray]:
        """The set's blocks of rows and the (set-local) rows in the split. Rows outside the split are
        kept rather than filtered out: a filter would copy every column of a large set."""
        table = read_conversation_set(path, columns=ITEM_COLUMNS).replace_schema_metadata(None)
        if table.num_rows == 0:
            raise UserError(f"{path} holds no conversations")
        if split_table is not None:
            placed = _splits_from_records(table.column("ecgs"), *split_table)
            if placed.null_count == len(placed):
                raise UserError(
                    f"no conversation of {path} has all its ECGs in one split of {splits_path} "
                    "(were the splits made from another store?)"
                )
            table = table.set_column(table.schema.get_field_index("split"), "split", placed)
        in_split = np.ones(table.num_rows, dtype=bool)
        if split is not None:
            if table.column("split").null_count == table.num_rows:
                raise UserError(
                    f"{path} has no splits: run `ecgbench data split --sets {path}` or give --splits"
                )
            in_split = pc.equal(table.column("split"), split).fill_null(False).to_numpy(zero_copy_only=False)
            if not in_split.any():
                raise UserError(f"{path} has no conversation in the {split} split")
        blocks = [_SetRows.located(batch, self.records) for batch in table.to_batches()]
        starts = np.cumsum([0] + [len(b) for b in blocks])
        found = [
            b.first_missing(in_split[a:z]) for b, a, z in zip(blocks, starts[:-1], starts[1:], strict=True)
        ]
        missing = [(block, hit) for block, hit in zip(blocks, found, strict=True) if hit is not None]
        if missing:
            block, (row, ref, _) = missing[0]
            count = sum(hit[2] for _, hit in missing)
            raise UserError(
                f"{path}: conversation {block.ids[row]} refers to ECG {block.ecg_corpus[ref]}/"
                f"{block.ecg_record[ref]}, which is in none of the given stores ({count} such reference(s) "
                "in the set; map the set against the store you train on)"
            )
        return blocks, np.flatnonzero(in_split)

    @staticmethod
    def _mixed_order(
        selected: list[np.ndarray], weights: Sequence[float] | None, seed: int, names: Sequence[str]
    ) -> np.ndarray:
        if weights is None:
            return np.concatenate(selected).astype(np.int64)
        rng = np.random.default_rng(seed)
        parts = []
        for rows, weight, name in zip(selected, weights, names, strict=True):
            whole, fraction = divmod(float(weight), 1.0)
            take = round(fraction * len(rows))
            if int(whole) == 0 and take == 0:
                raise UserError(f"weight {weight} keeps no conversation of {name} ({len(rows)} in the split)")
            parts += [rows] * int(whole)
            if take:
                parts.append(np.sort(rng.choice(rows, size=take, replace=False)))
        return np.concatenate(parts).astype(np.int64)

    # ------------------------------------------------------------------ items

    def __len__(self) -> int:
        return len(self.order)

    def _row(self, i: int) -> tuple[_SetRows, int]:
        row = int(self.order[i])
        k = bisect.bisect_right(self._starts, row) - 1
        return self._blocks[k], row - self._starts[k]

    def conversation_id(self, i: int) -> str:
        rows, row = self._row(i)
        return rows.ids[row]

    def turns(self, i: int) -> list[dict[str, str]]:
        rows, row = self._row(i)
        return rows.turns(row)

    def ecg_refs(self, i: int) -> list[EcgRef]:
        rows, row = self._row(i)
        return rows.ecg_refs(row)

    def ecgs(self, i: int) -> list[np.ndarray]:
        rows, row = self._row(i)
        return rows.ecgs(row, self.records)

    def __getitem__(self, i: int) -> ConversationItem:
        if not -len(self) <= i < len(self):
            raise IndexError(f"conversation {i} out of range ({len(self)})")
        rows, row = self._row(i)
        return ConversationItem(
            conversation_id=rows.ids[row],
            source=rows.sources[row],
            turns=rows.turns(row),
            ecgs=rows.ecgs(row, self.records),
            ecg_refs=rows.ecg_refs(row),
            question_type=rows.types[row],
            answer_options=rows.answer_options(row),
            split=rows.splits[row],
        )

    def length_proxy(self, ecg_tokens: float) -> np.ndarray:
        """A cheap size of each item (text characters / 4 + ECG tokens), for grouping batches by length
        without tokenizing anything."""
        sizes = [rows.text_chars() / 4.0 + np.diff(rows.ecg_offsets) * ecg_tokens for rows in self._blocks]
        return np.concatenate(sizes)[self.order]

    def info(self) -> dict[str, Any]:
        """What a run records about its data."""
        return {
            "sets": self.sources,
            "split": self.split,
            "conversations": len(self),
            "stores": [
                {"path": str(s.path), "corpus": s.corpus, "manifest_sha256": sha256_file(s.path / MANIFEST)}
                for s in self.records.stores
            ],
        }


def _record_splits(path: Path) -> tuple[pa.Array, pa.Array]:
    from ecgbench.data.splits import read_record_splits

    table = read_record_splits(path)
    keys = _keys(table.column("corpus"), table.column("record_id")).combine_chunks()
    return keys, table.column("split").combine_chunks()


def _splits_from_records(ecgs: pa.ChunkedArray, keys: pa.Array, names: pa.Array) -> pa.Array:
    """A conversation's split is its ECGs' split when they all have the same one, else none (as
    `data split` does; a conversation without ECGs has none)."""
    offsets, refs = _list_values(ecgs)
    fields = _fields(refs)
    row = pc.index_in(_keys(fields["corpus"], fields["record_id"]), value_set=keys)
    code = pc.index_in(pc.take(names, row), value_set=pa.array(SPLITS)).fill_null(-1)
    code = code.to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.full(len(offsets) - 1, -1, dtype=np.int64)
    nonempty = offsets[1:] > offsets[:-1]
    if code.size:
        starts = offsets[:-1][nonempty]
        low = np.minimum.reduceat(code, starts)
        high = np.maximum.reduceat(code, starts)
        out[nonempty] = np.where(low == high, low, -1)
    return pc.take(pa.array(SPLITS, pa.string()), pa.array(out, mask=out < 0))
