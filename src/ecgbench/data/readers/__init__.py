"""Corpus readers, one module per corpus, all producing :class:`~ecgbench.data.readers.base.RawRecord`."""

from __future__ import annotations

from ecgbench.data.readers.base import (
    CANONICAL_LEADS,
    CorpusReader,
    RawRecord,
    RecordRef,
    RecordRejected,
)
from ecgbench.data.readers.code15 import Code15Reader
from ecgbench.data.readers.cpsc import CpscReader
from ecgbench.data.readers.csn import CsnReader
from ecgbench.data.readers.mimic import MimicReader
from ecgbench.data.readers.ptbxl import PtbXlReader
from ecgbench.data.readers.sample import SampleReader
from ecgbench.data.readers.wfdb_dir import WfdbReader

# Command-line corpus name -> reader class.
READERS: dict[str, type[CorpusReader]] = {
    reader.name: reader
    for reader in (PtbXlReader, MimicReader, Code15Reader, CpscReader, CsnReader, WfdbReader, SampleReader)
}


def reader_class(name: str) -> type[CorpusReader]:
    from ecgbench.errors import UserError

    try:
        return READERS[name]
    except KeyError:
        raise UserError(f"unknown corpus {name!r} (allowed: {', '.join(READERS)})") from None


def load_record(ref: RecordRef) -> RawRecord:
    """Read one record with the reader that listed it (spawn-safe: a plain top-level function)."""
    return READERS[ref.reader].load(ref)


__all__ = [
    "CANONICAL_LEADS",
    "READERS",
    "CorpusReader",
    "RawRecord",
    "RecordRef",
    "RecordRejected",
    "load_record",
    "reader_class",
]
