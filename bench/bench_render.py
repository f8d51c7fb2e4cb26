"""ECG image rendering speed: ecgbench's numpy rasteriser beside ecg_plot + matplotlib on the same segments.

The peer renders each training image by plotting the segment with ecg_plot/matplotlib and saving a PNG;
this script does exactly that (ecg_plot's 12-lead chart drawn by matplotlib's Agg backend, PNG in memory,
decoded and resized to the model's size) and times it beside ``render_ecg_image`` (one segment at a
time, as a dataloader worker would call it, and in batches). Segments: every 500 Hz WFDB record in the
bundled sample, anti-aliased to 250 Hz, cut into 5 s (1250-sample) segments.

    python bench/bench_render.py [--size 224] [--peer-segments 12]
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import wfdb
from scipy.signal import resample_poly

from ecgbench.models.inputs import LEAD_NAMES, render_ecg_image
from ecgbench.resources import SAMPLE_DIR

FOLDERS = ("ptbxl_cinc2021", "chapman_shaoxing_ningbo_cinc2021", "cpsc2018_cinc2020")
SEG_LEN = 1250


def sample_segments() -> np.ndarray:
    segments = []
    for folder in FOLDERS:
        for header in sorted((SAMPLE_DIR / folder).glob("*.hea")):
            record = wfdb.rdrecord(str(header.with_suffix("")))
            order = [[n.upper() for n in record.sig_name].index(name.upper()) for name in LEAD_NAMES]
            signal = resample_poly(record.p_signal[:, order].T, 250, int(record.fs), axis=1)
            for start in range(0, signal.shape[1] - SEG_LEN + 1, SEG_LEN):
                segment = signal[:, start : start + SEG_LEN]
                if np.isfinite(segment).all():
                    segments.append(segment)
    return np.stack(segments).astype(np.float32)


def peer_render(segment: np.ndarray, size: int) -> np.ndarray:
    """ecg_plot chart -> matplotlib figure -> PNG bytes -> decoded, resized RGB array."""
    import ecg_plot
    import matplotlib.pyplot as plt
    from PIL import Image

    chart = ecg_plot.plot(segment, sample_rate=250, lead_names=list(LEAD_NAMES), layout="12lead")
    figure, _ = chart.to_matplotlib()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))


def peer_svg_only(segment: np.ndarray) -> str:
    """ecg_plot's own SVG scene, no pixels: a lower bound on its cost before any rasterisation."""
    import ecg_plot

    return ecg_plot.plot(segment, sample_rate=250, lead_names=list(LEAD_NAMES), layout="12lead").to_svg()


def best_rate(render: Callable[[], int], rounds: int = 3, seconds: float = 0.7) -> float:
    """Segments per second, the best of a few timed rounds (the machine may be shared)."""
    best = 0.0
    for _ in range(rounds):
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            count += render()
        best = max(best, count / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--peer-segments", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    segments = sample_segments()
    print(f"{len(segments)} real segments (12 x {SEG_LEN} at 250 Hz), image {args.size} x {args.size}")

    render_ecg_image(segments[:2], args.size)  # warm the grid cache

    def one_at_a_time() -> int:
        for segment in segments:
            render_ecg_image(segment[None], args.size)
        return len(segments)

    tiled = np.concatenate([segments] * max(1, -(-args.batch // len(segments))))[: args.batch]

    def batched() -> int:
        render_ecg_image(tiled, args.size)
        return len(tiled)

    ours_single = best_rate(one_at_a_time)
    ours_batch = best_rate(batched)

    peer_render(segments[0], args.size)  # import and font-cache cost out of the timing
    chosen = segments[: args.peer_segments]
    start = time.perf_counter()
    for segment in chosen:
        peer_render(segment, args.size)
    peer = len(chosen) / (time.perf_counter() - start)

    start = time.perf_counter()
    for segment in chosen:
        peer_svg_only(segment)
    svg_only = len(chosen) / (time.perf_counter() - start)

    print(f"{'renderer':<44}{'segments/s':>12}{'vs peer':>10}")
    print(f"{'ecg_plot + matplotlib (peer way), 1 core':<44}{peer:>12.1f}{1.0:>9.1f}x")
    print(f"{'ecg_plot SVG text only (no pixels)':<44}{svg_only:>12.1f}{svg_only / peer:>9.1f}x")
    print(f"{'ecgbench numpy, one segment per call':<44}{ours_single:>12.1f}{ours_single / peer:>9.1f}x")
    print(f"{f'ecgbench numpy, batches of {len(tiled)}':<44}{ours_batch:>12.1f}{ours_batch / peer:>9.1f}x")


if __name__ == "__main__":
    main()
