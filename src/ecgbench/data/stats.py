"""Statistics of a segment store and of conversation sets: counts, durations, labels, quality, rejections.

``store_stats`` and ``set_stats`` return plain JSON-able dicts; ``write_stats`` saves them as
``stats.json`` with one PNG per distribution; the CLI prints them as tables.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecgbench.data import plotting
from ecgbench.data.splits import record_heads
from ecgbench.files import atomic_write, refuse_inside_store


def rejected_counts(manifest: dict[str, Any]) -> dict[str, int]:
    """Rejected records by reason from a store manifest (``counts.rejected``), as ``corpus: reason``."""
    corpus = manifest.get("corpus", "?")
    rejected = (manifest.get("counts") or {}).get("rejected") or {}
    return {f"{corpus}: {reason}": int(n) for reason, n in rejected.items()}


_STAT_COLUMNS = [
    "corpus", "record_id", "patient_id", "labels", "sex", "age", "flat_leads", "saturated", "nan_filled",
    "duration_s",
]  # fmt: skip


def store_stats(indexes: Sequence[pa.Table], manifests: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Statistics of one or more segment stores (their indexes and manifests) taken together."""
    index = pa.concat_tables([i.select(_STAT_COLUMNS) for i in indexes])
    heads = record_heads(index)
    corpora = index.column("corpus").to_pylist()
    # The real (unpadded) length of each segment.
    seconds = index.column("duration_s").to_numpy(zero_copy_only=False).astype(np.float64)
    per_corpus: dict[str, dict[str, Any]] = {}
    for corpus in sorted(set(corpora)):
        mask = np.asarray([c == corpus for c in corpora])
        head_mask = pc.equal(heads.column("corpus"), corpus)
        part = heads.filter(head_mask)
        per_corpus[corpus] = {
            "records": len(part),
            "patients": len(set(part.column("patient_id").to_pylist())),
            "segments": int(mask.sum()),
            "hours": float(seconds[mask].sum() / 3600.0),
        }
    labels: Counter[str] = Counter(lab for labs in heads.column("labels").to_pylist() for lab in (labs or []))
    segments_per_record = Counter(
        zip(index.column("corpus").to_pylist(), index.column("record_id").to_pylist(), strict=True)
    )
    flat = [f for f in index.column("flat_leads").to_pylist() if f]
    nan_filled = index.column("nan_filled").to_numpy(zero_copy_only=False)
    return {
        "segments": len(index),
        "records": len(heads),
        "patients": len(
            set(zip(heads.column("corpus").to_pylist(), heads.column("patient_id").to_pylist(), strict=True))
        ),
        "hours": float(seconds.sum() / 3600.0),
        "segment_seconds": {
            "min": float(seconds.min()) if len(seconds) else 0.0,
            "mean": float(seconds.mean()) if len(seconds) else 0.0,
            "max": float(seconds.max()) if len(seconds) else 0.0,
        },
        "corpora": per_corpus,
        "labels": dict(labels.most_common()),
        "records_without_labels": sum(1 for labs in heads.column("labels").to_pylist() if not labs),
        "sex": dict(Counter(s or "unknown" for s in heads.column("sex").to_pylist())),
        "ages": [a for a in heads.column("age").to_pylist() if a is not None],
        "segments_per_record": dict(Counter(segments_per_record.values())),
        "quality": {
            "segments_with_flat_leads": len(flat),
            "flat_leads": dict(Counter(lead for leads in flat for lead in leads)),
            "segments_saturated": int(pc.sum(index.column("saturated")).as_py() or 0),
            "segments_with_filled_gaps": int((nan_filled > 0).sum()),
            "samples_filled": int(nan_filled.sum()),
        },
        "rejected": dict(sum((Counter(rejected_counts(m)) for m in manifests), Counter())),
    }


def set_stats(table: pa.Table) -> dict[str, Any]:
    turns = table.column("turns").to_pylist()
    answers = [len(t["content"].split()) for conv in turns for t in conv if t["role"] == "assistant"]
    return {
        "conversations": len(table),
        "sources": dict(Counter(table.column("source").to_pylist())),
        "question_types": dict(Counter(q or "none" for q in table.column("question_type").to_pylist())),
        "ecgs_per_conversation": dict(Counter(str(len(e)) for e in table.column("ecgs").to_pylist())),
        "turns_per_conversation": dict(Counter(str(len(t)) for t in turns)),
        "source_splits": dict(Counter(s or "none" for s in table.column("source_split").to_pylist())),
        "splits": dict(Counter(s or "unsplit" for s in table.column("split").to_pylist())),
        "answer_words_mean": float(np.mean(answers)) if answers else 0.0,
        "distinct_ecgs": len(
            {(e["corpus"], e["record_id"]) for es in table.column("ecgs").to_pylist() for e in es}
        ),
    }


def write_stats(stats: dict[str, Any], out_dir: Path) -> list[Path]:
    """``stats.json`` and the PNG plots of each distribution; returns the files written."""
    out_dir = Path(out_dir)
    refuse_inside_store(out_dir / "stats.json", "--out")  # the PNGs are not written through atomic_write
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "stats.json"]
    text = json.dumps(stats, indent=2, sort_keys=True)
    atomic_write(written[0], lambda tmp: tmp.write_text(text, encoding="utf-8"))
    store = stats.get("store")
    if store:
        segments = {c: v["segments"] for c, v in store["corpora"].items()}
        written.append(
            plotting.bar_chart(segments, out_dir / "segments_per_corpus.png", title="Segments per corpus")
        )
        if store["labels"]:
            written.append(
                plotting.bar_chart(
                    store["labels"], out_dir / "labels.png", title="Records per label (top 30)"
                )
            )
        if store["ages"]:
            written.append(
                plotting.histogram(store["ages"], out_dir / "ages.png", title="Age", xlabel="years")
            )
        if store["rejected"]:
            written.append(
                plotting.bar_chart(
                    store["rejected"], out_dir / "rejected.png", title="Rejected records by reason"
                )
            )
    for name, sets in stats.get("sets", {}).items():
        safe = Path(name).stem
        written.append(
            plotting.bar_chart(
                sets["question_types"],
                out_dir / f"{safe}_question_types.png",
                title=f"{name}: question types",
            )
        )
    return written
