"""Retrieval: ecgbench's RAG index (`data rag build`) beside the peer's way, on the same store in one run.

The store: every segment of the bundled real sample (``data prepare sample``: 68 segments of 28 records,
10 s at 250 Hz), copied up to --segments, each copy a perturbed version of its real segment (per-lead gain
N(1, 0.1), a circular shift of up to 1 s, 0.02 mV Gaussian noise) under its own record and patient id, so
no two vectors tie. It is written as a real segment store, so both ways read the same file.

- ecgbench: per-lead ECG features (``ecgbench.rag.features``, 12 x 15 values), standardised, in an exact
  ``IndexFlatL2`` (``--index-type auto`` at this size) and, to show the approximate path, in HNSW; searched
  through ``RagIndex.search`` (own record and patient filtered, one neighbour per record);
- the peer (ECG-Bench, re-implemented from its description): faiss IVF-Flat over the raw flattened
  signals (12 x 1250 = 15,000 values), nlist = min(100, N / 30), nprobe 10; the query's own segment is
  in the index and nothing filters it.

Figures: build time (features or flattening + faiss training and adding), queries per second (faiss alone;
ours also through the filtered search, and end to end with the query's features computed), recall@10 of
each index against exact search over its own vectors, and how often a query's own record is among its ten
neighbours (the peer's defect 3).

    python bench/bench_rag.py                  # 10,000 segments, 1,000 queries
    python bench/bench_rag.py --quick          # 2,000 segments, 300 queries
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

K = 10


def build_store(sample: Path, out: Path, segments: int, seed: int) -> Path:
    """A segment store of ``segments`` perturbed copies of the sample's real segments (see the notes)."""
    from ecgbench.data.store import SegmentStore, shard_name, write_store_files
    from ecgbench.files import sha256_file

    real = SegmentStore.open(sample)
    signals = real.read_many(np.arange(len(real)))
    rng = np.random.default_rng(seed)
    source = np.arange(segments) % len(real)
    gain = rng.normal(1.0, 0.1, size=(segments, 12, 1)).astype(np.float32)
    shift = rng.integers(0, real.fs, size=segments)
    positions = (np.arange(real.seg_len)[None, :] - shift[:, None]) % real.seg_len
    x = np.take_along_axis(signals[source], positions[:, None, :].repeat(12, axis=1), axis=2) * gain
    x += rng.normal(0.0, 0.02, size=x.shape).astype(np.float32)
    (out / "shards").mkdir(parents=True)
    np.save(out / shard_name(0), x.astype(np.float32))
    index = real.index.take(pa.array(source))
    copy = (np.arange(segments) // len(real)).astype(str)
    for name in ("record_id", "patient_id"):
        values = np.char.add(np.char.add(np.asarray(index.column(name).to_pylist(), dtype=str), "~"), copy)
        index = index.set_column(index.schema.get_field_index(name), name, pa.array(values.tolist()))
    index = index.set_column(
        index.schema.get_field_index("shard"), "shard", pa.array(np.zeros(segments, np.int32))
    )
    index = index.set_column(index.schema.get_field_index("offset"), "offset", pa.array(np.arange(segments)))
    shards = [{"file": shard_name(0), "segments": segments, "sha256": sha256_file(out / shard_name(0))}]
    manifest = {k: real.manifest[k] for k in ("corpus", "fs", "seg_len", "dtype") if k in real.manifest}
    manifest["dtype"] = "float32"
    write_store_files(out, [index], [], shards, manifest)
    return out


def recall_at_k(truth: np.ndarray, found: np.ndarray) -> float:
    return float(
        np.mean([len(set(t.tolist()) & set(f.tolist())) / len(t) for t, f in zip(truth, found, strict=True)])
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--quick", action="store_true", help="2,000 segments, 300 queries")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.segments, args.queries = 2_000, 300

    import faiss
    from typer.testing import CliRunner

    from ecgbench.cli import app
    from ecgbench.data.store import SegmentStore
    from ecgbench.rag.index import RagIndex, build_index, feature_vectors, segment_keys

    with tempfile.TemporaryDirectory(prefix="ecgbench-bench-rag-") as tmp:
        root = Path(tmp)
        result = CliRunner().invoke(app, ["data", "prepare", "sample", "--out", str(root / "sample")])
        assert result.exit_code == 0, result.output
        store_path = build_store(root / "sample", root / "store", args.segments, args.seed)
        store = SegmentStore.open(store_path)
        n = len(store)
        rng = np.random.default_rng(args.seed)
        query_ids = np.sort(rng.choice(n, size=min(args.queries, n), replace=False))
        real_segments = len(SegmentStore.open(root / "sample"))
        print(
            f"store: {n} segments (perturbed copies of {real_segments} real ones), "
            f"{len(query_ids)} queries, k = {K}"
        )

        # ---- ours
        figures: dict[str, dict[str, float]] = {}
        every_segment = feature_vectors(store, np.arange(n))  # for the exact reference (not timed)
        for kind in ("auto", "hnsw"):
            start = time.perf_counter()
            built = build_index(store_path, root / f"ours-{kind}", kind=kind)
            build_s = time.perf_counter() - start
            index = RagIndex.open(root / f"ours-{kind}")
            raw_queries = every_segment[query_ids]
            vectors = index.standardise(raw_queries)
            exact = faiss.IndexFlatL2(index.dim)
            exact.add(index.standardise(every_segment))
            _, truth = exact.search(vectors, K)
            start = time.perf_counter()
            _, found = index.faiss_index.search(vectors, K)
            faiss_s = time.perf_counter() - start
            records, patients = segment_keys(store.index.take(pa.array(query_ids)))
            start = time.perf_counter()
            hits = index.search(vectors, [[r] for r in records], [[p] for p in patients], K)
            filtered_s = time.perf_counter() - start
            start = time.perf_counter()
            index.standardise(feature_vectors(store, query_ids))
            features_s = time.perf_counter() - start
            own = np.mean(
                [
                    any(f"{h.corpus}\x1f{h.record_id}" == r for h in hit)
                    for r, hit in zip(records, hits, strict=True)
                ]
            )
            figures[f"ours ({built.kind})"] = {
                "build_s": build_s,
                "qps_faiss": len(query_ids) / faiss_s,
                "qps_filtered": len(query_ids) / filtered_s,
                "qps_end_to_end": len(query_ids) / (filtered_s + features_s),
                "recall_at_10": recall_at_k(truth, found),
                "own_record_in_top10": float(own),
                "dim": index.dim,
            }

        # ---- the peer's way
        start = time.perf_counter()
        flat = np.ascontiguousarray(store.read_many(np.arange(n)).reshape(n, -1), dtype=np.float32)
        nlist = max(1, min(100, n // 30))
        quantizer = faiss.IndexFlatL2(flat.shape[1])
        peer = faiss.IndexIVFFlat(quantizer, flat.shape[1], nlist)
        peer.train(flat)
        peer.add(flat)
        peer.nprobe = 10
        peer_build_s = time.perf_counter() - start
        queries = flat[query_ids]
        start = time.perf_counter()
        _, peer_found = peer.search(queries, K)
        peer_s = time.perf_counter() - start
        exact = faiss.IndexFlatL2(flat.shape[1])
        exact.add(flat)
        _, peer_truth = exact.search(queries, K)
        record_of = np.asarray(store.index.column("record_id").to_pylist(), dtype=object)
        peer_own = np.mean(
            [(record_of[f[f >= 0]] == record_of[q]).any() for q, f in zip(query_ids, peer_found, strict=True)]
        )
        figures["peer (IVF-Flat, raw signals)"] = {
            "build_s": peer_build_s,
            "qps_faiss": len(query_ids) / peer_s,
            "qps_filtered": float("nan"),
            "qps_end_to_end": len(query_ids) / peer_s,
            "recall_at_10": recall_at_k(peer_truth, peer_found),
            "own_record_in_top10": float(peer_own),
            "dim": flat.shape[1],
        }

    print(f"\n{'':32s} {'dims':>6s} {'build s':>8s} {'qps faiss':>10s} {'qps filtered':>13s} "
          f"{'qps e2e':>9s} {'recall@10':>10s} {'own record':>11s}")  # fmt: skip
    for name, f in figures.items():
        rates = f"{f['qps_faiss']:10.0f} {f['qps_filtered']:13.0f} {f['qps_end_to_end']:9.0f}"
        print(f"{name:32s} {f['dim']:6d} {f['build_s']:8.2f} {rates} {f['recall_at_10']:10.3f} "
              f"{f['own_record_in_top10']:11.1%}")  # fmt: skip
    peer_f = figures["peer (IVF-Flat, raw signals)"]
    for name, f in figures.items():
        if name.startswith("ours"):
            print(f"{name}: build time {f['build_s'] / peer_f['build_s']:.2f}x the peer's, end-to-end "
                  f"queries {f['qps_end_to_end'] / peer_f['qps_end_to_end']:.1f}x the peer's rate, "
                  f"recall@10 {f['recall_at_10']:.3f} vs {peer_f['recall_at_10']:.3f}")  # fmt: skip
    print(json.dumps({"segments": n, "queries": len(query_ids), "figures": figures}))


if __name__ == "__main__":
    main()
