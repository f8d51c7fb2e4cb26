"""Export a segment store as a Hugging Face ``datasets`` dataset: every index column plus ``signal``
(an Array2D (12, seg_len) in the store's dtype). Written locally with ``save_to_disk``; uploaded with
``push_to_hub`` only when the user names a repository."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ecgbench.data.store import SegmentStore
from ecgbench.errors import UserError
from ecgbench.files import check_output, write_error

ROWS_PER_READ = 256


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise UserError("export needs the `datasets` package: pip install 'ecgbench-elm[hub]'") from None
    return datasets


def features_for(store: SegmentStore) -> Any:
    datasets = _datasets()
    features = datasets.Features.from_arrow_schema(store.index.schema)
    features["signal"] = datasets.Array2D(shape=(len(store.leads), store.seg_len), dtype=store.dtype.name)
    return features


def _rows(store: SegmentStore) -> Iterator[dict[str, Any]]:
    index = store.index
    for start in range(0, len(store), ROWS_PER_READ):
        stop = min(start + ROWS_PER_READ, len(store))
        signals = store.read_many(range(start, stop)).astype(store.dtype, copy=False)
        for offset, row in enumerate(index.slice(start, stop - start).to_pylist()):
            row["signal"] = signals[offset]
            yield row


def export_store(
    store_path: Path, out: Path | None, *, push_to_hub: str | None = None, private: bool = True
) -> Any:
    """Build the dataset, save it to ``out`` (if given) and push it to ``push_to_hub`` (if given)."""
    if out is None and push_to_hub is None:
        raise UserError("give --out DIR, --push-to-hub REPO_ID, or both")
    if out is not None and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise UserError(f"--out {out} is not empty; choose a new folder")
    store = SegmentStore.open(store_path)
    check_output(out, "--out", [store_path])
    store.verify()  # the whole store is exported: every shard against its checksum, first
    datasets = _datasets()
    # Build in a private cache folder (not ~/.cache) that is removed once the dataset is written out.
    with tempfile.TemporaryDirectory(prefix="ecgbench-export-") as cache:
        dataset = datasets.Dataset.from_generator(
            _rows,
            features=features_for(store),
            gen_kwargs={"store": store},
            cache_dir=cache,
            # from the manifest, so the builder need not hash the generator's arguments
            fingerprint=_fingerprint(store),
        )
        if push_to_hub is not None:
            dataset.push_to_hub(push_to_hub, private=private)
        if out is None:
            return None
        try:
            dataset.save_to_disk(str(out))
        except OSError as exc:
            raise write_error(Path(out), exc) from None
    return datasets.load_from_disk(str(out))


def _fingerprint(store: SegmentStore) -> str:
    import hashlib
    import json

    shards = json.dumps(store.manifest["shards"], sort_keys=True)
    return hashlib.sha256(f"{store.path.resolve()}|{shards}".encode()).hexdigest()[:32]
