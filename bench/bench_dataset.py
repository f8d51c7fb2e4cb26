"""A million-conversation set through the one data path: ecgbench's ConversationDataset beside the peer's way.

The set: the ``labels`` conversations of the bundled real sample (``data prepare sample``, ``data map
labels``, ``data split --folds 5``) repeated under new conversation ids up to --conversations (default
1,000,000: PULSE's ECGInstruct has over a million), written with ``write_conversation_set``. The peer's
copy of the same conversations is one JSON list (LLaVA style: id, ECG path, human/gpt turns) and one
``.npy`` file per segment, re-implemented here from its description (no peer code).

Each figure comes from a fresh process, so its resident memory is that step's alone:

- open: ``ConversationDataset(set, store, split="train")`` / the peer's ``json.load`` of the whole list;
- raw examples/s: random items (turns + ECG array) / the peer's list item + ``np.load`` of the record's
  first segment, found by a scan of the segment files on each call (as the peer looks its files up),
  and with the path given (no scan);
- processed examples/s per core: item + ``processor.prepare_example`` (max_length 1024) for the end-to-end
  token ELM on tiny-llama (the Llama-3 vocabulary) with an ECG-Byte tokenizer trained on the store. Rates
  per core are examples per CPU second of the process (all its threads), so other load on the machine
  does not count against them.

Goals (issue 8): open in under 2 s, under 1.5 GB resident, at least 50,000 raw examples/s and at least
2,000 processed training examples/s per core.

    python bench/bench_dataset.py                  # 1,000,000 conversations
    python bench/bench_dataset.py --quick          # 100,000 conversations, fewer reads
    python bench/bench_dataset.py --workdir W      # keep (and reuse) the store, sets and peer files in W
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MAX_LENGTH = 1024
NUM_MERGES = 3500  # the `tokenizer train` default


def rss_bytes() -> int:
    """Resident memory now (psutil when installed, else /proc)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Clock:
    """Wall and CPU time of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def python_speed_us() -> float:
    """CPU microseconds of ``sum(range(1000))``: how fast this machine runs Python (a recent desktop
    core takes about 6-8)."""
    with Clock() as clock:
        for _ in range(2000):
            sum(range(1000))
    return clock.cpu / 2000 * 1e6


# ------------------------------------------------------------------------------------ building the data


def _ecgbench(*args: str) -> None:
    script = Path(sys.executable).parent / "ecgbench"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "ecgbench.cli"]
    subprocess.run([*command, *args], check=True, capture_output=True)


def paths_of(work: Path, conversations: int) -> dict[str, Path]:
    return {
        "store": work / "store",
        "labels": work / "split" / "labels.parquet",
        "set": work / f"conversations-{conversations}.parquet",
        "peer_json": work / f"peer-{conversations}.json",
        "peer_segments": work / "peer-segments",
        "tokenizer": work / "tokenizer.json",
    }


def build(work: Path, conversations: int) -> dict[str, Path]:
    """The store, the split labels set, the big set, the peer's JSON and segment files (reused if there)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ecgbench.data.conversations import read_conversation_set, write_conversation_set
    from ecgbench.data.store import SegmentStore
    from ecgbench.tokenizer import ECGByteTokenizer

    paths = paths_of(work, conversations)
    if not (paths["store"] / "manifest.json").is_file():
        _ecgbench("data", "prepare", "sample", "--out", str(paths["store"]))
    if not paths["labels"].is_file():
        _ecgbench("data", "map", "labels", "--store", str(paths["store"]), "--out", str(work / "sets"))
        labels = str(work / "sets" / "labels.parquet")
        _ecgbench("data", "split", "--store", str(paths["store"]), "--sets", labels,
                  "--out", str(work / "split"), "--folds", "5")  # fmt: skip
    store = SegmentStore.open(paths["store"])
    if not paths["tokenizer"].is_file():
        ECGByteTokenizer.train(store.read_many(np.arange(len(store))), NUM_MERGES, threads=1).save(
            paths["tokenizer"]
        )
    base = read_conversation_set(paths["labels"])
    if not paths["set"].is_file():
        copy = np.arange(conversations) // base.num_rows
        big = base.take(pa.array(np.arange(conversations) % base.num_rows))
        ids = pc.binary_join_element_wise(big.column("conversation_id"), pa.array(copy.astype(str)), "#")
        write_conversation_set(paths["set"], big.set_column(0, "conversation_id", ids))
    if not paths["peer_segments"].is_dir():
        tmp = paths["peer_segments"].with_name("peer-segments.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        index = store.index.select(["corpus", "record_id", "segment_index"]).to_pylist()
        for segment_id, row in enumerate(index):
            np.save(
                tmp / f"{row['corpus']}_{row['record_id']}_{row['segment_index']}.npy", store.read(segment_id)
            )
        tmp.rename(paths["peer_segments"])
    if not paths["peer_json"].is_file():
        rows = base.select(["conversation_id", "turns", "ecgs"]).to_pylist()
        roles = {"user": "human", "assistant": "gpt"}
        tmp = paths["peer_json"].with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as out:  # streamed: the list is never whole in this process
            out.write("[")
            for k in range(conversations):
                row = rows[k % len(rows)]
                ecg = row["ecgs"][0]
                item = {
                    "id": f"{row['conversation_id']}#{k // len(rows)}",
                    "ecg": f"{ecg['corpus']}_{ecg['record_id']}",
                    "conversations": [
                        {"from": roles[t["role"]], "value": t["content"]} for t in row["turns"]
                    ],
                }
                out.write(("," if k else "") + json.dumps(item))
            out.write("]")
        tmp.rename(paths["peer_json"])
    return paths


# ------------------------------------------------------------------------------------------- children


def child_open(paths: dict[str, Path], _: argparse.Namespace) -> dict[str, Any]:
    from ecgbench.data.dataset import ConversationDataset

    before = rss_bytes()
    with Clock() as clock:
        dataset = ConversationDataset([paths["set"]], [paths["store"]], split="train")
    return {"wall": clock.wall, "cpu": clock.cpu, "rss": rss_bytes(), "peak": peak_rss_bytes(),
            "rss_before": before, "conversations": len(dataset)}  # fmt: skip


def child_raw(paths: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    from ecgbench.data.dataset import ConversationDataset

    dataset = ConversationDataset([paths["set"]], [paths["store"]], split="train")
    order = np.random.default_rng(0).integers(0, len(dataset), size=args.reads).tolist()
    for i in order[:1000]:  # page in the shards the reads touch
        dataset[i]
    with Clock() as clock:
        for i in order:
            dataset[i]
    return {"wall": clock.wall, "cpu": clock.cpu, "reads": len(order), "peak": peak_rss_bytes()}


def child_processed(paths: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ecgbench.data.dataset import ConversationDataset
    from ecgbench.models.elm import ELMConfig, build_elm

    torch.set_num_threads(1)
    dataset = ConversationDataset([paths["set"]], [paths["store"]], split="train")
    store = dataset.records.stores[0]
    config = ELMConfig(architecture="token", representation="tokens", llm="tiny-llama", llm_training="frozen",
                       signal_length=store.seg_len, fs=store.fs)  # fmt: skip
    processor = build_elm(config, ecg_tokenizer=paths["tokenizer"]).processor
    order = np.random.default_rng(1).integers(0, len(dataset), size=args.processed).tolist()
    lengths = []
    for i in order[:20]:  # warm: template compilation, first shard pages
        item = dataset[i]
        processor.prepare_example(item.turns, item.ecgs, max_length=MAX_LENGTH)
    with Clock() as clock:
        for i in order:
            item = dataset[i]
            lengths.append(
                len(processor.prepare_example(item.turns, item.ecgs, max_length=MAX_LENGTH)["input_ids"])
            )
    return {
        "wall": clock.wall,
        "cpu": clock.cpu,
        "examples": len(order),
        "mean_tokens": float(np.mean(lengths)),
    }


def child_peer_open(paths: dict[str, Path], _: argparse.Namespace) -> dict[str, Any]:
    before = rss_bytes()
    with Clock() as clock, paths["peer_json"].open(encoding="utf-8") as handle:
        data = json.load(handle)
    return {"wall": clock.wall, "cpu": clock.cpu, "rss": rss_bytes(), "peak": peak_rss_bytes(),
            "rss_before": before, "conversations": len(data)}  # fmt: skip


def child_peer_raw(paths: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    with paths["peer_json"].open(encoding="utf-8") as handle:
        data = json.load(handle)
    folder = str(paths["peer_segments"])
    order = np.random.default_rng(0).integers(0, len(data), size=args.reads).tolist()
    out = {}
    for name in ("scan", "path"):
        with Clock() as clock:
            for i in order:
                item = data[i]
                if name == "scan":  # the record's segment files, looked up on every call
                    first = sorted(glob.glob(os.path.join(folder, f"{item['ecg']}_*.npy")))[0]
                else:
                    first = os.path.join(folder, f"{item['ecg']}_0.npy")
                np.load(first)
        out[name] = {"wall": clock.wall, "cpu": clock.cpu}
    return {**out, "reads": len(order)}


CHILDREN = {"open": child_open, "raw": child_raw, "processed": child_processed, "peer-open": child_peer_open,
            "peer-raw": child_peer_raw}  # fmt: skip


def run_child(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    sizes = ["--conversations", str(args.conversations), "--reads", str(args.reads),
             "--processed", str(args.processed)]  # fmt: skip
    argv = [sys.executable, __file__, "--child", name, "--workdir", str(work), *sizes]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall time."""
    return sorted(runs, key=lambda run: run["wall"])[len(runs) // 2]


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=50_000, help="random raw reads")
    parser.add_argument("--processed", type=int, default=1_000, help="random processed training examples")
    parser.add_argument(
        "--quick", action="store_true", help="100,000 conversations, 10,000 reads, 200 examples"
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per open (median)")
    parser.add_argument("--workdir", type=Path, help="keep the built files here (and reuse them)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.conversations, args.reads, args.processed = 100_000, 10_000, 200
    if args.child:
        paths = paths_of(args.workdir, args.conversations)  # built by the parent
        print(json.dumps(CHILDREN[args.child](paths, args)))
        return

    temporary = None
    if args.workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="ecgbench-bench-dataset-")
        args.workdir = Path(temporary.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        with Clock() as clock:
            paths = build(args.workdir, args.conversations)
        megabytes = {name: paths[name].stat().st_size / 1e6 for name in ("set", "peer_json")}
        sizes = f"set {megabytes['set']:.1f} MB, peer JSON {megabytes['peer_json']:.0f} MB"
        print(f"data: {args.conversations:,} conversations (the sample's labels set repeated under new ids), "
              f"built in {clock.wall:.0f} s; {sizes}")  # fmt: skip
        # Opening is short and this machine may be shared: the median of --repeats fresh processes.
        opens = [run_child("open", args.workdir, args) for _ in range(args.repeats)]
        peer_opens = [run_child("peer-open", args.workdir, args) for _ in range(args.repeats)]
        ours = {
            "open": median_run(opens),
            **{n: run_child(n, args.workdir, args) for n in ("raw", "processed")},
        }
        peer = {"peer-open": median_run(peer_opens), "peer-raw": run_child("peer-raw", args.workdir, args)}
    finally:
        if temporary is not None:
            temporary.cleanup()

    o, p = ours["open"], peer["peer-open"]
    gb = 1e9
    print(f"\nmachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, python speed "
          f"{python_speed_us():.1f} us CPU per sum(range(1000)) (a recent desktop core: ~7)")  # fmt: skip
    print(f"\n{'':38}{'ecgbench':>14}{'peer':>14}   goal")
    print(f"{f'open: wall s (median of {args.repeats})':38}{o['wall']:>14.2f}{p['wall']:>14.2f}   < 2 s")
    print(f"{'open: CPU s':38}{o['cpu']:>14.2f}{p['cpu']:>14.2f}")
    print(f"{'resident after open, GB':38}{o['rss'] / gb:>14.2f}{p['rss'] / gb:>14.2f}   < 1.5 GB")
    print(f"{'peak resident, GB':38}{o['peak'] / gb:>14.2f}{p['peak'] / gb:>14.2f}")
    print(f"{'  of which before opening, GB':38}{o['rss_before'] / gb:>14.2f}{p['rss_before'] / gb:>14.2f}")
    r, pr = ours["raw"], peer["peer-raw"]
    n = r["reads"]
    print(f"{'raw examples/s, wall':38}{n / r['wall']:>14,.0f}{n / pr['scan']['wall']:>14,.0f}   >= 50,000")
    print(f"{'raw examples/s per CPU second':38}{n / r['cpu']:>14,.0f}{n / pr['scan']['cpu']:>14,.0f}")
    print(f"{'  peer without the per-call scan':38}{'':>14}{n / pr['path']['cpu']:>14,.0f}")
    e = ours["processed"]
    print(f"{'processed examples/s per core':38}{e['examples'] / e['cpu']:>14,.0f}{'-':>14}   >= 2,000")
    print(f"{'  wall (one process)':38}{e['examples'] / e['wall']:>14,.0f}")
    print(f"\n{o['conversations']:,} conversations in the train split; {n:,} random raw reads; "
          f"{e['examples']:,} processed examples of {e['mean_tokens']:.0f} tokens on average (max_length "
          f"{MAX_LENGTH}, ECG-Byte runs cut to fit). The peer has no processor to time here: its "
          "examples are built inside its training loop.")  # fmt: skip


if __name__ == "__main__":
    main()
