"""The real sample bundled with ecgbench (``ecgbench.resources.SAMPLE_DIR``; see its README for sources
and licences), read with the corpus readers: PTB-XL native (the 100 Hz record ``00001_lr`` with its
metadata row) and its Challenge-2021 copies, CPSC 2018 in both forms, Chapman-Shaoxing/Ningbo, and the
PTB Diagnostic record through the generic WFDB reader. All go into one store (``store.corpus`` is
"sample"; each row keeps its own corpus). MIMIC-IV-ECG has metadata but no waveform in the sample."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ecgbench.data.readers.base import CorpusReader, RawRecord, RecordRef
from ecgbench.data.readers.cpsc import CpscReader
from ecgbench.data.readers.csn import CsnReader
from ecgbench.data.readers.ptbxl import PtbXlReader
from ecgbench.data.readers.wfdb_dir import WfdbReader
from ecgbench.resources import SAMPLE_DIR


class SampleReader(CorpusReader):
    name = "sample"
    corpus = "sample"

    def __init__(self, root: Path | None = None, **options: Any):
        super().__init__(root or SAMPLE_DIR, **options)
        statements = self.root / "ptbxl" / "scp_statements.csv"
        self.parts: list[tuple[str, CorpusReader]] = [
            ("ptbxl", PtbXlReader(self.root / "ptbxl", **options)),
            (
                "ptbxl_cinc2021",
                PtbXlReader(self.root / "ptbxl_cinc2021", scp_statements=statements, **options),
            ),
            ("cpsc2018", CpscReader(self.root / "cpsc2018")),
            ("cpsc2018_cinc2020", CpscReader(self.root / "cpsc2018_cinc2020")),
            ("chapman_shaoxing_ningbo_cinc2021", CsnReader(self.root / "chapman_shaoxing_ningbo_cinc2021")),
            ("physionet_wfdb_misc", WfdbReader(self.root / "physionet_wfdb_misc")),
        ]

    def metadata_files(self) -> list[Path]:
        return [path for _, reader in self.parts for path in reader.metadata_files()]

    def discover(self) -> list[RecordRef]:
        refs = []
        for folder, reader in self.parts:
            for ref in reader.discover():
                # source paths relative to the sample root, so they name the folder too
                refs.append(_with_source(ref, f"{folder}/{ref.source_path}"))
        return refs

    @staticmethod
    def load(ref: RecordRef) -> RawRecord:
        from ecgbench.data.readers import load_record  # refs name the corpus reader that reads them

        return load_record(ref)


def _with_source(ref: RecordRef, source_path: str) -> RecordRef:
    return replace(ref, source_path=source_path)
