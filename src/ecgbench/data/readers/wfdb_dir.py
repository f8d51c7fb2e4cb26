"""Any directory of WFDB records (``.hea`` with ``.dat`` or ``.mat`` signal files, any format wfdb reads:
16, 212, 16+24, 24, 32, ...), for corpora ecgbench does not know by name. Leads are matched by name
case-insensitively; Frank leads (vx, vy, vz) are ignored. Age, sex and SNOMED ``Dx`` codes are taken
from header comments when present."""

from __future__ import annotations

from collections import Counter

from ecgbench.data.readers.base import CorpusReader, RawRecord, RecordRef
from ecgbench.data.readers.challenge import list_headers, load_challenge_record
from ecgbench.errors import UserError


class WfdbReader(CorpusReader):
    name = "wfdb"
    corpus = "wfdb"

    def discover(self) -> list[RecordRef]:
        headers = list_headers(self.root)
        if not headers:
            raise UserError(f"no WFDB records (.hea files) under {self.root}")
        stems = Counter(h.stem for h in headers)
        refs = []
        for header in headers:
            relative = header.relative_to(self.root).with_suffix("").as_posix()
            refs.append(
                RecordRef(
                    reader=self.name,
                    corpus=self.corpus,
                    # the record name, or its relative path when two folders hold the same name
                    record_id=header.stem if stems[header.stem] == 1 else relative,
                    path=str(header.with_suffix("")),
                    source_path=relative,
                )
            )
        return refs

    @staticmethod
    def load(ref: RecordRef) -> RawRecord:
        return load_challenge_record(ref)
