"""Prepare throughput and random segment reads: ecgbench's segment store beside the peer's way.

The peer (ECG-Bench) prepares with wfdb, cubic interpolation to the target rate, no filtering, and
writes one ``.npy`` file per segment with ``np.save``; training then reads segments with ``np.load``.
Both ways run here on the same records in one run: the bundled real 500 Hz records (Chapman-Shaoxing/
Ningbo, PTB-XL and CPSC Challenge copies), copied ``--copies`` times into a WFDB folder.

    python bench/bench_store.py --copies 40 --reads 10000
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import wfdb
from scipy.interpolate import interp1d

from ecgbench.data.prepare import prepare
from ecgbench.data.readers.base import canonical_lead_index
from ecgbench.data.store import SegmentStore
from ecgbench.resources import SAMPLE_DIR
from ecgbench.settings import DataSettings

SOURCES = ["chapman_shaoxing_ningbo_cinc2021", "ptbxl_cinc2021", "cpsc2018_cinc2020"]


def build_corpus(root: Path, copies: int) -> list[Path]:
    """``copies`` folders, each holding every 500 Hz Challenge-format record of the sample."""
    headers = []
    for copy in range(copies):
        folder = root / f"copy{copy:04d}"
        folder.mkdir(parents=True)
        for source in SOURCES:
            for file in (SAMPLE_DIR / source).glob("*"):
                if file.suffix in (".hea", ".mat"):
                    shutil.copy(file, folder / file.name)
        headers += sorted(folder.glob("*.hea"))
    return headers


def peer_prepare(headers: list[Path], out: Path, fs: int, seg_len: int) -> int:
    """The peer's way: rdsamp, cubic interpolation to ``fs``, segments saved one file each."""
    out.mkdir(parents=True)
    n = 0
    for header in headers:
        signal, fields = wfdb.rdsamp(str(header.with_suffix("")))
        order = [canonical_lead_index(name) for name in fields["sig_name"]]
        signal = signal[:, np.argsort(order)].T
        t = np.arange(signal.shape[1]) / fields["fs"]
        t_new = np.arange(round(signal.shape[1] * fs / fields["fs"])) / fs
        interpolate = interp1d(t, signal, kind="cubic", axis=1, bounds_error=False, fill_value="extrapolate")
        resampled = interpolate(t_new)
        for k in range(resampled.shape[1] // seg_len):
            segment = resampled[:, k * seg_len : (k + 1) * seg_len]
            np.save(out / f"{header.parent.name}_{header.stem}_{k}.npy", segment)
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=40, help="copies of the 21 sample records")
    parser.add_argument("--reads", type=int, default=10_000, help="random segment reads")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="ecgbench-bench-") as tmp:
        tmp_path = Path(tmp)
        headers = build_corpus(tmp_path / "raw", args.copies)
        print(f"corpus: {len(headers)} real 500 Hz records ({args.copies} copies of {len(SOURCES)} folders)")

        start = time.perf_counter()
        n_peer = peer_prepare(headers, tmp_path / "peer", 250, 1250)
        peer_s = time.perf_counter() - start

        settings = DataSettings(workers=args.workers, dtype="float32")
        start = time.perf_counter()
        store = prepare("wfdb", tmp_path / "raw", tmp_path / "store", settings).store
        ours_s = time.perf_counter() - start
        assert len(store) == n_peer, (len(store), n_peer)

        peer_rate = len(headers) / peer_s
        ours_rate = len(headers) / ours_s / args.workers
        print("\nprepare (records per second per worker; ours also filters, checks NaN/flat/saturation)")
        print(f"  peer (cubic interp, one .npy per segment): {peer_rate:8.1f}")
        ratio = ours_rate / peer_rate
        print(f"  ecgbench segment store:                    {ours_rate:8.1f}   ratio {ratio:.2f}")

        ids = rng.integers(0, len(store), size=args.reads)
        peer_files = sorted(os.listdir(tmp_path / "peer"))

        start = time.perf_counter()
        opened = SegmentStore.open(store.path)
        open_s = time.perf_counter() - start
        start = time.perf_counter()
        listed = sorted(os.listdir(tmp_path / "peer"))
        list_s = time.perf_counter() - start
        assert len(listed) == len(opened)

        # Both ways read from the page cache alike (same data, same machine, one run).
        start = time.perf_counter()
        for i in ids:
            opened.read(int(i))  # a full copy of the segment out of the shard
        ours_read = time.perf_counter() - start

        start = time.perf_counter()
        for i in ids:
            np.load(tmp_path / "peer" / peer_files[int(i)])
        peer_read = time.perf_counter() - start

        # Training-style access: batches of 32 random segments stacked into one array.
        batches = ids[: args.reads // 32 * 32].reshape(-1, 32)
        start = time.perf_counter()
        for batch in batches:
            np.stack([np.load(tmp_path / "peer" / peer_files[int(i)]) for i in batch])
        peer_batches = time.perf_counter() - start
        start = time.perf_counter()
        for batch in batches:
            opened.read_many(batch)
        ours_batches = time.perf_counter() - start

        print(
            f"\nopen ({len(store)} segments): store {open_s * 1e3:.2f} ms, "
            f"peer directory listing {list_s * 1e3:.2f} ms"
        )
        print(f"random reads of {args.reads} segments (one at a time)")
        print(f"  peer np.load per file: {peer_read:7.3f} s  ({args.reads / peer_read:9.0f} segments/s)")
        print(
            f"  store.read(i):         {ours_read:7.3f} s  ({args.reads / ours_read:9.0f} segments/s)"
            f"   speed-up {peer_read / ours_read:.1f}x"
        )
        print(f"random batches of 32 segments ({len(batches)} batches)")
        print(f"  peer np.stack of np.load: {peer_batches:7.3f} s")
        print(
            f"  store.read_many(batch):   {ours_batches:7.3f} s   speed-up {peer_batches / ours_batches:.1f}x"
        )
        files = len(peer_files)
        print(f"\nfiles on disk: peer {files} .npy, store {len(store.manifest['shards'])} shard(s) + index")


if __name__ == "__main__":
    main()
