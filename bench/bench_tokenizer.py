"""ECG-Byte tokenizer benchmark: ours beside the peer's algorithm and Hugging Face `tokenizers`.

Corpus: real 12-lead records from the bundled sample (Chapman/Ningbo, PTB-XL and CPSC copies of the
PhysioNet Challenge, 500 Hz), resampled to 250 Hz and cut into 5 s windows (1250 samples) at shifting
offsets until the requested number of segments is reached; each window is symbolised (per-lead
min/max) into one 15,000-symbol string. Every tokenizer gets the same strings in the same run.

"peer" rows are re-implementations, written here, of the peer's algorithms as described (its code is
not used): a trainer that recounts every pair after every merge (O(merges x N); vectorised with
numpy, and without the peer's boundary-crossing defect, so its merges must equal ours), and a greedy
longest-match encoder over all vocabulary strings in pure Python.

    python bench/bench_tokenizer.py                      # 200 segments (3M symbols), 1000 merges
    python bench/bench_tokenizer.py --segments 6667 --merges 5000 --skip-peer-train   # ~100M symbols
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time

import numpy as np

FS = 250
SEG_LEN = 1250
RECORD_DIRS = ("chapman_shaoxing_ningbo_cinc2021", "ptbxl_cinc2021", "cpsc2018_cinc2020")


def load_records() -> list[np.ndarray]:
    import wfdb
    from scipy.signal import resample_poly

    from ecgbench.resources import SAMPLE_DIR

    records = []
    for folder in RECORD_DIRS:
        for header in sorted((SAMPLE_DIR / folder).glob("*.hea")):
            record = wfdb.rdrecord(str(header.with_suffix("")))
            if record.fs != 500 or record.n_sig != 12:
                continue
            signal = np.nan_to_num(record.p_signal.T)
            records.append(resample_poly(signal, 1, 2, axis=1).astype(np.float32))
    return records


def build_corpus(n_segments: int) -> tuple[np.ndarray, list[int]]:
    """Symbol codes (uint8, 0..25) of n_segments windows, and their lengths."""
    from ecgbench.tokenizer.symbols import Symbolizer

    records = load_records()
    symbolizer = Symbolizer("lead")
    codes = np.empty(n_segments * 12 * SEG_LEN, dtype=np.uint8)
    made, shift = 0, 0
    while made < n_segments:
        for record in records:
            for start in range(shift, record.shape[1] - SEG_LEN + 1, SEG_LEN):
                window = record[:, start : start + SEG_LEN]
                if made == n_segments or window.max() == window.min():
                    continue
                codes[made * 12 * SEG_LEN : (made + 1) * 12 * SEG_LEN] = symbolizer.symbolize(window)[0]
                made += 1
        shift = (shift + 37) % SEG_LEN
    return codes, [12 * SEG_LEN] * n_segments


def strings_of(codes: np.ndarray, lengths: list[int]) -> list[str]:
    text = (codes + 97).tobytes().decode("ascii")
    bounds = np.cumsum([0, *lengths])
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def train_ours_child(n_segments: int, merges: int) -> None:
    """Run in a fresh process: build the corpus, then train; report time and memory as JSON."""
    from ecgbench._ecgbyte import Trainer

    codes, lengths = build_corpus(n_segments)
    raw = codes.tobytes()
    del codes
    before = peak_rss_bytes()
    started = time.perf_counter()
    result = Trainer().train(raw, lengths, merges, 2, False, None)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "symbols": result[2],
                "tokens": result[3],
                "merges": len(result[0]),
                "peak_rss": peak_rss_bytes(),
                "rss_before_training": before,
            }
        )
    )


def peer_train(codes: np.ndarray, lengths: list[int], merges: int) -> list[tuple[int, int]]:
    """The peer's algorithm: after every merge, recount every pair of the whole corpus."""
    sep = -1
    parts = np.split(codes.astype(np.int64), np.cumsum(lengths)[:-1])
    seq = np.concatenate([np.concatenate([[sep], p]) for p in parts] + [[sep]])
    vocab, learned = 26, []
    for _ in range(merges):
        left, right = seq[:-1], seq[1:]
        valid = (left != sep) & (right != sep)
        keys = left[valid] * (26 + merges) + right[valid]
        counts = np.bincount(keys)
        best = int(counts.argmax())  # ties -> smallest key = smallest (left, right), as ours
        if counts[best] < 2:
            break
        a, b = divmod(best, 26 + merges)
        hits = np.flatnonzero((left == a) & (right == b))
        if a == b:  # in a run "aaa" merge left to right: keep every other hit
            run_start = np.r_[True, np.diff(hits) != 1]
            first = np.maximum.accumulate(np.where(run_start, np.arange(len(hits)), 0))
            hits = hits[(np.arange(len(hits)) - first) % 2 == 0]
        seq[hits] = vocab
        seq = np.delete(seq, hits + 1)
        learned.append((a, b))
        vocab += 1
    return learned


def peer_greedy(strings: list[str], vocab_strings: list[str]) -> int:
    """The peer's encoder: longest vocabulary string at each position (pure Python); returns tokens."""
    by_string = {s: i for i, s in enumerate(vocab_strings)}
    prefixes = {s[:k] for s in by_string for k in range(1, len(s) + 1)}
    n_tokens = 0
    for text in strings:
        i = 0
        while i < len(text):
            j, best = i + 1, i + 1
            while j <= len(text) and text[i:j] in prefixes:
                if text[i:j] in by_string:
                    best = j
                j += 1
            n_tokens += 1
            i = best
    return n_tokens


def hf_train(strings: list[str], merges: int):
    from tokenizers import Tokenizer, models, trainers

    tokenizer = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=26 + merges,
        min_frequency=2,
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyz"),
        show_progress=False,
    )
    tokenizer.train_from_iterator(strings, trainer=trainer)  # no pre-tokenizer: a segment is one word
    return tokenizer


def timed(fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--segments", type=int, default=200, help="5 s, 12-lead, 250 Hz windows")
    parser.add_argument("--merges", type=int, default=1000)
    parser.add_argument("--skip-peer-train", action="store_true", help="skip the O(merges x N) trainer")
    parser.add_argument("--skip-hf", action="store_true", help="skip Hugging Face tokenizers")
    parser.add_argument(
        "--peer-encode-symbols", type=int, default=300_000, help="symbols for the Python greedy"
    )
    parser.add_argument("--child-train", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_train:
        train_ours_child(args.segments, args.merges)
        return

    from ecgbench.tokenizer import ECGByteTokenizer

    codes, lengths = build_corpus(args.segments)
    n = codes.size
    print(
        f"corpus: {args.segments} segments, {n:,} symbols (real records, 250 Hz, 5 s windows); "
        f"{args.merges} merges"
    )

    # Ours: training in a fresh process so its peak RSS is its own.
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child-train",
            "--segments",
            str(args.segments),
            "--merges",
            str(args.merges),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    ours = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        f"ours   train: {ours['seconds']:8.2f} s   merges {ours['merges']}   "
        f"compression {n / ours['tokens']:.3f}x   "
        f"peak RSS {ours['peak_rss'] / n:.1f} B/symbol (process total; "
        f"{(ours['peak_rss'] - ours['rss_before_training']) / n:.1f} B/symbol added by training)"
    )

    strings = strings_of(codes, lengths)
    tok = ECGByteTokenizer.train_symbols(strings, args.merges)
    rows = {}
    # The first call on a fresh tokenizer is the figure: bpe memoises chunks per worker, and those
    # caches stay warm across calls, so the repeat shows the cache's best case separately.
    for mode, label in (("bpe", "bpe"), ("greedy", "greedy"), ("bpe", "bpe (repeat call, warm caches)")):
        ids, seconds = timed(lambda m=mode: tok.encode_symbols_batch(strings, mode=m))
        rows.setdefault(mode, (seconds, sum(len(i) for i in ids)))
        print(
            f"ours   encode_batch {label:6s}: {n / seconds / 1e6:7.1f} M symbols/s   "
            f"compression {n / rows[mode][1]:.3f}x"
        )

    if not args.skip_hf:
        hf, hf_seconds = timed(hf_train, strings, args.merges)
        encoded, hf_enc_seconds = timed(hf.encode_batch, strings)
        hf_tokens = sum(len(e.ids) for e in encoded)
        print(
            f"HF     train: {hf_seconds:8.2f} s   vocab {hf.get_vocab_size()}   "
            f"compression {n / hf_tokens:.3f}x   "
            f"encode_batch {n / hf_enc_seconds / 1e6:.1f} M symbols/s"
        )
        print(
            f"ratios: train HF/ours {hf_seconds / ours['seconds']:.1f}x   encode ours-bpe/HF "
            f"{hf_enc_seconds / rows['bpe'][0]:.1f}x   compression ours/HF {hf_tokens / ours['tokens']:.3f}"
        )

    if not args.skip_peer_train:
        peer_merges, peer_seconds = timed(peer_train, codes, lengths, args.merges)
        same = peer_merges == tok.merges
        print(
            f"peer   train (re-implemented recount-every-merge): {peer_seconds:8.2f} s   "
            f"same merges as ours: {same}   ratio peer/ours {peer_seconds / ours['seconds']:.1f}x"
        )
    subset, total = [], 0
    for s in strings:
        if total >= args.peer_encode_symbols:
            break
        subset.append(s)
        total += len(s)
    peer_tokens, peer_enc_seconds = timed(peer_greedy, subset, tok.token_strings)
    ours_greedy = sum(len(i) for i in tok.encode_symbols_batch(subset, mode="greedy"))
    print(
        f"peer   greedy encode (re-implemented, pure Python, {total:,} symbols): "
        f"{total / peer_enc_seconds / 1e6:.2f} M symbols/s   same token count as our greedy: "
        f"{peer_tokens == ours_greedy}"
    )


if __name__ == "__main__":
    main()
