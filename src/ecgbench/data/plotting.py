"""A standard 12-lead paper-style ECG figure of one segment, and the bar/histogram plots of ``data stats``.

The 12-lead figure follows the printed layout: three rows of four columns (I II III | aVR aVL aVF |
V1 V2 V3 | V4 V5 V6), each column a consecutive quarter of the segment, and a lead II rhythm strip over the
whole segment below, on a 1 mm / 5 mm grid at 25 mm/s and 10 mm/mV with a 1 mV calibration pulse. The page
is drawn in millimetres, so a print at 100 % has true paper scale. ``renderer="ecg-plot"`` draws the same
layout with the ``ecg_plot`` package instead (SVG natively, PNG through its Matplotlib scene).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ecgbench.data.readers.base import CANONICAL_LEADS
from ecgbench.errors import UserError
from ecgbench.files import refuse_inside_store, write_error

COLUMNS = (("I", "II", "III"), ("aVR", "aVL", "aVF"), ("V1", "V2", "V3"), ("V4", "V5", "V6"))
SPEED_MM_S = 25.0
GAIN_MM_MV = 10.0
ROW_MM = 30.0  # one row of the printed page: room for +-1.5 mV
MARGIN_MM = 10.0
CALIBRATION_MM = 8.0
MM_PER_INCH = 25.4
Renderer = Literal["ecgbench", "ecg-plot"]


def _save(fig, path: Path, dpi: int) -> Path:
    """``fig`` written to ``path`` (never inside a segment store; a failed write is one line naming it)."""
    plt = _matplotlib()
    path = Path(path)
    refuse_inside_store(path, "--out")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        plt.close(fig)
    return path


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _check_signal(signal: np.ndarray) -> np.ndarray:
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[0] != len(CANONICAL_LEADS):
        raise UserError(f"a 12-lead plot needs a (12, samples) signal, got shape {signal.shape}")
    if signal.shape[1] < 8:
        raise UserError(f"segment too short to plot ({signal.shape[1]} samples)")
    return signal


def _grid(ax, width_mm: float, height_mm: float) -> None:
    minor = np.arange(0, max(width_mm, height_mm) + 1, 1.0)
    for x in minor[minor <= width_mm]:
        ax.axvline(x, color="#f4c6c6" if x % 5 else "#e08080", lw=0.3 if x % 5 else 0.6, zorder=0)
    for y in minor[minor <= height_mm]:
        ax.axhline(y, color="#f4c6c6" if y % 5 else "#e08080", lw=0.3 if y % 5 else 0.6, zorder=0)


def _calibration(ax, x0: float, baseline: float) -> None:
    pulse_mm = 0.2 * SPEED_MM_S  # 200 ms wide, 1 mV high
    xs = [x0, x0 + 1, x0 + 1, x0 + 1 + pulse_mm, x0 + 1 + pulse_mm, x0 + 2 + pulse_mm]
    ys = [baseline, baseline, baseline + GAIN_MM_MV, baseline + GAIN_MM_MV, baseline, baseline]
    ax.plot(xs, ys, color="black", lw=0.8)


def render_twelve_lead(signal: np.ndarray, fs: float, path: Path, *, title: str = "", dpi: int = 150) -> Path:
    """Draw ``signal`` (12, samples) in mV at ``fs`` Hz as a paper-style PNG/SVG/PDF at ``path``."""
    signal = _check_signal(signal)
    if fs <= 0:
        raise UserError(f"sampling rate must be positive, got {fs}")
    plt = _matplotlib()
    n = signal.shape[1]
    duration = n / fs
    strip_mm = duration * SPEED_MM_S
    left = MARGIN_MM + CALIBRATION_MM
    width_mm = left + strip_mm + MARGIN_MM
    rows = 4  # three lead rows and the rhythm strip
    height_mm = 2 * MARGIN_MM + rows * ROW_MM
    fig = plt.figure(figsize=(width_mm / MM_PER_INCH, height_mm / MM_PER_INCH))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width_mm)
    ax.set_ylim(0, height_mm)
    ax.set_aspect("equal")
    ax.axis("off")
    _grid(ax, width_mm, height_mm)
    quarter = n // 4
    t_mm = np.arange(n) / fs * SPEED_MM_S
    for row in range(rows):
        baseline = height_mm - MARGIN_MM - (row + 0.5) * ROW_MM
        _calibration(ax, MARGIN_MM, baseline)
        if row == 3:
            lead = CANONICAL_LEADS.index("II")
            ax.plot(left + t_mm, baseline + signal[lead] * GAIN_MM_MV, color="black", lw=0.6)
            ax.text(left + 1, baseline + 0.35 * ROW_MM, "II", fontsize=7)
            continue
        for col, names in enumerate(COLUMNS):
            lead = CANONICAL_LEADS.index(names[row])
            start, stop = col * quarter, (col + 1) * quarter if col < 3 else n
            ax.plot(
                left + t_mm[start:stop],
                baseline + signal[lead, start:stop] * GAIN_MM_MV,
                color="black",
                lw=0.6,
            )
            ax.text(left + t_mm[start] + 1, baseline + 0.35 * ROW_MM, names[row], fontsize=7)
            if col:  # the short divider printed where one lead group hands over to the next
                ax.plot([left + t_mm[start]] * 2, [baseline - 3, baseline + 3], color="black", lw=0.6)
    caption = f"{SPEED_MM_S:g} mm/s   {GAIN_MM_MV:g} mm/mV   {fs:g} Hz   {duration:g} s"
    ax.text(MARGIN_MM, MARGIN_MM / 3, f"{title}   {caption}" if title else caption, fontsize=7)
    return _save(fig, path, dpi)


def render_with_ecg_plot(
    signal: np.ndarray, fs: float, path: Path, *, title: str = "", dpi: int = 150
) -> Path:
    """The same 3x4 + lead II layout drawn by the ``ecg_plot`` package (``pip install ecg-plot``)."""
    signal = _check_signal(signal)
    try:
        import ecg_plot
    except ImportError:
        raise UserError(
            "--renderer ecg-plot needs the ecg-plot package: pip install 'ecg-plot>=0.3'"
        ) from None
    chart = ecg_plot.plot(
        signal,
        sample_rate=fs,
        lead_names=list(CANONICAL_LEADS),
        layout="12lead",
        time_mode="sequential",
        rhythm_lead="II",
        title=title or None,
    )
    path = Path(path)
    if path.suffix.lower() == ".svg":
        refuse_inside_store(path, "--out")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            chart.save(path)
        except OSError as exc:
            raise write_error(path, exc) from None
        return path
    fig, _ = chart.to_matplotlib()
    return _save(fig, path, dpi)


def plot_segment(
    signal: np.ndarray,
    fs: float,
    path: Path,
    *,
    renderer: Renderer = "ecgbench",
    title: str = "",
    dpi: int = 150,
) -> Path:
    if Path(path).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UserError(f"--out must end in .png, .svg or .pdf: {path}")
    if renderer == "ecg-plot":
        return render_with_ecg_plot(signal, fs, path, title=title, dpi=dpi)
    return render_twelve_lead(signal, fs, path, title=title, dpi=dpi)


def bar_chart(
    counts: Mapping[str, int], path: Path, *, title: str, xlabel: str = "count", top: int = 30
) -> Path:
    """Horizontal bars of the ``top`` largest counts."""
    plt = _matplotlib()
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    fig, ax = plt.subplots(figsize=(7, max(2.0, 0.28 * len(items) + 1)))
    if items:
        names, values = zip(*items, strict=True)
        ax.barh(range(len(items)), values, color="#4c72b0")
        ax.set_yticks(range(len(items)), names, fontsize=7)
        ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path, 120)


def histogram(values: Sequence[float], path: Path, *, title: str, xlabel: str, bins: int = 30) -> Path:
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    finite = np.asarray([v for v in values if v is not None], dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size:
        ax.hist(finite, bins=bins, color="#55a868")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path, 120)
