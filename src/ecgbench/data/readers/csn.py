"""Chapman-Shaoxing and Ningbo 12-lead databases (PhysioNet ``ecg-arrhythmia`` 1.0.0 and the Challenge
2021 copy): ``JS<number>.hea`` + ``.mat`` at 500 Hz with SNOMED-CT ``#Dx:`` codes mapped to condition
names. Records JS00001-JS10646 come from Chapman-Shaoxing, later numbers from Ningbo (kept in meta)."""

from __future__ import annotations

from ecgbench.data.readers.base import CorpusReader, RawRecord, RecordRef
from ecgbench.data.readers.challenge import list_headers, load_challenge_record
from ecgbench.errors import UserError

_LAST_CHAPMAN = 10646


def source_hospital(record_id: str) -> str | None:
    digits = record_id.removeprefix("JS")
    if not digits.isdigit():
        return None
    return "chapman-shaoxing" if int(digits) <= _LAST_CHAPMAN else "ningbo"


class CsnReader(CorpusReader):
    name = "csn"
    corpus = "csn"
    mains_hz = 50.0  # recorded in China
    expected_fs = (500.0,)

    def discover(self) -> list[RecordRef]:
        headers = list_headers(self.root)
        if not headers:
            raise UserError(
                f"no .hea records under {self.root} (expected Chapman-Shaoxing/Ningbo JS*.hea + .mat)"
            )
        refs = []
        for header in headers:
            hospital = source_hospital(header.stem)
            refs.append(
                RecordRef(
                    reader=self.name,
                    corpus=self.corpus,
                    record_id=header.stem,
                    path=str(header.with_suffix("")),
                    source_path=header.relative_to(self.root).with_suffix("").as_posix(),
                    meta={"hospital": hospital} if hospital else {},
                )
            )
        return refs

    @staticmethod
    def load(ref: RecordRef) -> RawRecord:
        return load_challenge_record(ref, require_labels=True)
