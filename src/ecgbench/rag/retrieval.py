"""Retrieved reports in the conversation: one retrieval step and one pure insertion, shared by training and
inference (the processor calls both in ``prepare_example`` and ``prepare_prompt``, so the two paths see
the same context in the same place).

- :class:`Retrieval`: given a conversation's ECGs and their records, the top-k retrievable neighbours of
  each ECG (never its own record or patient, never an excluded split: :mod:`ecgbench.rag.leakage`), as
  context lines of report and labels;
- :func:`augment`: the context block into the system prompt or in front of the first user turn.

The first user turn, not the last: in a multi-turn conversation a prompt for the second answer holds the
first user turn as history, so the block sits where it sat when the model was trained on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ecgbench.errors import UserError

Placement = Literal["system", "user"]
PLACEMENTS: tuple[str, ...] = ("system", "user")
CONTEXT_HEADER = "Reports of similar ECGs (retrieved, other patients):"


def context_line(hit: Any) -> str:
    """One neighbour as text: its report, then its labels (a record may have either or both)."""
    parts = []
    if hit.report:
        parts.append(str(hit.report).strip())
    if hit.labels:
        parts.append("labels: " + ", ".join(hit.labels))
    return " ".join(parts) if parts else "(no report)"


def augment(
    turns: Sequence[Mapping[str, str]], system: str | None, contexts: Sequence[str], placement: Placement
) -> tuple[list[dict[str, str]], str | None]:
    """``turns`` and ``system`` with the retrieved ``contexts`` inserted (pure; see the module notes)."""
    out = [dict(t) for t in turns]
    if not contexts:
        return out, system
    block = "\n".join([CONTEXT_HEADER, *(f"{i}. {text}" for i, text in enumerate(contexts, 1))])
    if placement == "system":
        return out, block if not system else f"{system}\n\n{block}"
    if placement != "user":
        raise UserError(f"invalid RAG placement {placement!r} (allowed: {', '.join(PLACEMENTS)})")
    for turn in out:
        if turn.get("role") == "user":
            turn["content"] = f"{block}\n\n{turn['content']}"
            break
    return out, system


class Retrieval:
    """An opened index with its k and placement, and the patients of every record of the stores the
    conversations come from (a query's patient must be known to exclude it; records outside these stores
    are refused)."""

    def __init__(self, index_dir: Path, stores: Sequence[Any], *, k: int, placement: Placement):
        from ecgbench.rag.index import RagIndex, segment_keys

        if k < 1:
            raise UserError("--rag-k must be at least 1")
        if placement not in PLACEMENTS:
            raise UserError(f"invalid --rag-placement {placement!r} (allowed: {', '.join(PLACEMENTS)})")
        self.index = RagIndex.open(index_dir)
        if self.index.vector_kind != "features":
            raise UserError(
                f"--rag {index_dir}: the index holds encoder embeddings; training and inference retrieve by "
                "ECG features (build the index with --vectors features)"
            )
        built_from = self.index.manifest["store"]["manifest_sha256"]
        from ecgbench.data.store import MANIFEST
        from ecgbench.files import sha256_file

        if built_from not in {sha256_file(Path(s.path) / MANIFEST) for s in stores}:
            raise UserError(
                f"--rag {index_dir} was built from another store ({self.index.manifest['store']['path']}); "
                "build the index from one of the --store folders"
            )
        for store in stores:
            self.index.check_signals(store.fs, store.seg_len)
        self.k = int(k)
        self.placement: Placement = placement
        self.patient_of: dict[str, str] = {}
        for store in stores:
            records, patients = segment_keys(store.index.select(["corpus", "record_id", "patient_id"]))
            self.patient_of.update(zip(records.tolist(), patients.tolist(), strict=True))
        self.fs = float(stores[0].fs)

    def check_splits(self, splits_path: Path | None, evaluated: Sequence[str]) -> None:
        """Refuse an index that could hand out reports of the splits a run is evaluated on: built without
        splits, built with another splits file than the run's, or keeping an evaluated split in."""
        from ecgbench.files import sha256_file

        built = self.index.manifest.get("splits")
        if built is None:
            raise UserError(
                f"--rag {self.index.path} was built without --splits: build it with the run's splits file so "
                "the evaluation split stays out of it"
            )
        if splits_path is not None and sha256_file(Path(splits_path)) != built["sha256"]:
            raise UserError(
                f"--rag {self.index.path} was built with another splits file ({built['path']}) than --splits "
                f"{splits_path}: build the index with the same splits"
            )
        kept = [name for name in evaluated if name not in built["excluded"]]
        if kept:
            raise UserError(
                f"--rag {self.index.path} keeps the {kept[0]} split retrievable; build it with "
                f"--exclude-split {kept[0]}"
            )

    def record(self) -> dict[str, Any]:
        """What a run records about its retrieval (inference checks it against the checkpoint's)."""
        return {
            "index": str(self.index.path.resolve()),
            "manifest_sha256": self.index.manifest_sha256,
            "k": self.k,
            "placement": self.placement,
        }

    def contexts(self, ecgs: Sequence[np.ndarray], refs: Sequence[Any]) -> list[str]:
        """Context lines for a conversation: the top-k neighbours of each ECG, none of any of the
        conversation's records or patients, each record once."""
        if not len(ecgs):
            return []  # no ECG given (e.g. `--ecg none`): nothing to retrieve by
        from ecgbench.rag.leakage import record_key

        own_records = [record_key(r.corpus, r.record_id) for r in refs]
        missing = [key for key in own_records if key not in self.patient_of]
        if missing:
            raise UserError(
                f"ECG {missing[0].replace(chr(31), '/')} is in none of the stores the RAG index knows; "
                "its patient cannot be excluded"
            )
        own_patients = [self.patient_of[key] for key in own_records]
        vectors = self.index.query_vectors(np.stack([np.asarray(e, dtype=np.float32) for e in ecgs]), self.fs)
        hits = self.index.search(vectors, [own_records] * len(ecgs), [own_patients] * len(ecgs), self.k)
        lines: list[str] = []
        seen: set[tuple[str, str]] = set()
        for per_ecg in hits:
            for hit in per_ecg:
                if (hit.corpus, hit.record_id) not in seen:
                    seen.add((hit.corpus, hit.record_id))
                    lines.append(context_line(hit))
        return lines

    def apply(
        self,
        turns: Sequence[Mapping[str, str]],
        system: str | None,
        ecgs: Sequence[np.ndarray],
        refs: Sequence[Any] | None,
    ) -> tuple[list[dict[str, str]], str | None]:
        if refs is None:
            raise ValueError("retrieval needs the conversation's ECG records (refs) to exclude them")
        return augment(turns, system, self.contexts(ecgs, refs), self.placement)


def run_of_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The run.json of the run a checkpoint folder belongs to (``RUN/best``, ``RUN/checkpoints/step-N``),
    so a checkpoint given directly is still answered with the retrieval it was trained with."""
    from ecgbench.train import run_dir as rd

    for folder in (Path(directory).parent, Path(directory).parent.parent):
        if (folder / rd.RUN_FILE).is_file():
            return rd.read_run(folder)
    return None


def inference_retrieval(
    run: Mapping[str, Any] | None,
    *,
    rag: Path | None,
    k: int | None,
    placement: str | None,
    stores: Sequence[Any],
    splits_path: Path | None,
    split: str,
) -> Retrieval | None:
    """The retrieval step of ``infer generate``. A run trained with ``--rag`` is answered with the same k
    and placement (other values are refused) and the same index (its manifest SHA-256 must match; another
    folder may be named with ``--rag`` if it holds the same index). A checkpoint trained without it gets
    retrieval only when asked for."""
    trained = dict(((run or {}).get("settings") or {}).get("train") or {})
    if trained.get("rag") is None:
        if rag is None:
            if k is not None or placement is not None:
                raise UserError("--rag-k and --rag-placement need --rag INDEX_DIR")
            return None
        retrieval = Retrieval(Path(rag), stores, k=k or 3, placement=placement or "system")  # type: ignore[arg-type]
    else:
        for name, given in (("rag_k", k), ("rag_placement", placement)):
            if given is not None and given != trained[name]:
                flag = "--" + name.replace("_", "-")
                raise UserError(
                    f"{flag} {given}: the run was trained with {flag} {trained[name]}; drop the flag"
                )
        index_dir = Path(rag) if rag is not None else Path(trained["rag"])
        retrieval = Retrieval(index_dir, stores, k=int(trained["rag_k"]), placement=trained["rag_placement"])
        expected = list(((run or {}).get("inputs") or {}).get("rag_index", {}).values())
        if expected and retrieval.index.manifest_sha256 != expected[0]:
            raise UserError(
                f"--rag {index_dir} is not the index the run was trained with (manifest sha256 "
                f"{retrieval.index.manifest_sha256[:12]}, the run's {expected[0][:12]}): give the run's index"
            )
    retrieval.check_splits(splits_path, [split])
    return retrieval
