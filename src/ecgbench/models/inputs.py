"""Input representations of a 12-lead ECG segment for the encoders and ELMs.

- ``signal``: the (12, L) float32 signal in mV, unchanged.
- ``stacked``: a 3-channel image made from the signal itself. The 12 leads in canonical order fill the
  3 channels with 4 lead bands each (channel 0: I II III aVR, 1: aVL aVF V1 V2, 2: V3..V6); each band
  repeats its lead down the rows. Only the time axis is resized (anti-aliased) to the image width and
  each lead is scaled to [0, 1] by its own range, so no lead is squeezed into a few pixel rows or
  interpolated across its neighbours.
- ``image``: a 12-lead paper-style plot (3 x 4 standard layout plus a lead II rhythm strip, paper grid)
  rasterised with vectorised numpy: thousands of segments per second per core, fast enough for a
  dataloader. ``publication_figure`` keeps ecg_plot for figures meant for people.
- ``tokens``: ECG-Byte ids from an ``ECGByteTokenizer``.

Images are float32 in [0, 1], channel-first; vision encoders apply their own normalisation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ecgbench.data.readers.base import CANONICAL_LEADS
from ecgbench.errors import UserError

LEAD_NAMES = CANONICAL_LEADS  # the readers' order; PAPER_LAYOUT and the stacked bands index into it
KINDS = ("signal", "stacked", "image", "tokens")
Kind = Literal["signal", "stacked", "image", "tokens"]

#: standard 3 x 4 printout: row r, column c shows this lead over the c-th quarter of the segment
PAPER_LAYOUT = ((0, 3, 6, 9), (1, 4, 7, 10), (2, 5, 8, 11))
RHYTHM_LEAD = 1  # lead II across the whole segment in the bottom row
PAPER_MM_PER_S = 25.0
PAPER_MM_PER_MV = 10.0
MINOR_RGB = (0.97, 0.90, 0.90)
MAJOR_RGB = (0.90, 0.70, 0.70)
TRACE_RGB = (0.0, 0.0, 0.0)
RENDER_CHUNK = 8


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if height < 8 or width < 8:
        raise UserError(f"image size must be at least 8 x 8 pixels, got {height} x {width}")
    return int(height), int(width)


def as_signal_batch(signal: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(12, L) or (B, 12, L) -> float32 tensor (B, 12, L) and whether the input was a single segment.

    Rejects shapes without 12 leads and non-finite samples (NaN gaps must be filled at preparation).
    """
    tensor = torch.as_tensor(signal).detach()
    single = tensor.ndim == 2
    if single:
        tensor = tensor[None]
    if tensor.ndim != 3 or tensor.shape[1] != len(LEAD_NAMES) or tensor.shape[2] < 2:
        shape = tuple(torch.as_tensor(signal).shape)
        raise UserError(f"expected a 12-lead signal (12, L) or (B, 12, L), got shape {shape}")
    tensor = tensor.to(torch.float32)
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise UserError(
            f"signal has {bad} NaN/infinite samples; fill or drop them before building representations"
        )
    return tensor, single


# -- stacked signal ------------------------------------------------------------------------------


def stacked_signal(signals: torch.Tensor, image_size: int | tuple[int, int] = 224) -> torch.Tensor:
    """(B, 12, L) mV -> (B, 3, H, W) in [0, 1]: 4 lead bands per channel, each lead scaled by its range."""
    height, width = _size(image_size)
    batch, leads, _ = signals.shape
    low = signals.amin(dim=-1, keepdim=True)
    span = signals.amax(dim=-1, keepdim=True) - low
    # A flat lead (span 0) becomes mid-grey rather than a division by zero.
    scaled = torch.where(span > 0, (signals - low) / span.clamp_min(1e-12), torch.full_like(signals, 0.5))
    # Resize time only; antialias filters before decimating so QRS peaks are not aliased away.
    resized = F.interpolate(
        scaled[:, :, None, :], size=(1, width), mode="bilinear", antialias=True, align_corners=False
    )
    bands = resized[:, :, 0, :].reshape(batch, 3, leads // 3, width)
    band_of_row = torch.div(torch.arange(height) * (leads // 3), height, rounding_mode="floor")
    return bands[:, :, band_of_row, :].clamp_(0.0, 1.0).contiguous()


# -- paper-style image ---------------------------------------------------------------------------


def _line_positions(extent: int, step: float) -> np.ndarray:
    positions = np.floor(np.arange(int(extent / step) + 1) * step).astype(np.int64)
    return np.unique(positions[positions < extent])


@functools.lru_cache(maxsize=32)
def _paper_grid(
    height: int, width: int, supersample: int, duration_s: float, mv_per_row: float
) -> np.ndarray:
    """The paper background (3, H, W) for one geometry, computed once and reused for every segment."""
    canvas_h, canvas_w = height * supersample, width * supersample
    px_per_mm_x = canvas_w / (duration_s * PAPER_MM_PER_S)
    px_per_mm_y = (canvas_h / 4) / (mv_per_row * PAPER_MM_PER_MV)
    canvas = np.ones((3, canvas_h, canvas_w), dtype=np.float32)
    for step_mm, rgb in ((1.0, MINOR_RGB), (5.0, MAJOR_RGB)):
        # Minor lines closer than 3 canvas pixels would only tint the paper; skip them.
        if min(px_per_mm_x, px_per_mm_y) * step_mm < 3.0:
            continue
        cols = _line_positions(canvas_w, px_per_mm_x * step_mm)
        rows = _line_positions(canvas_h, px_per_mm_y * step_mm)
        for channel, value in enumerate(rgb):
            canvas[channel][:, cols] = value
            canvas[channel][rows, :] = value
    grid = canvas.reshape(3, height, supersample, width, supersample).mean(axis=(2, 4))
    grid.setflags(write=False)
    return grid


def _pixel_envelopes(signals: np.ndarray, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel column, the min and max of the trace over that column's time span (B, 12, pixels).

    Includes the interpolated values at both column edges, so neighbouring columns overlap by a point
    and the drawn trace is connected; includes every sample inside, so narrow QRS peaks are never lost.
    """
    length = signals.shape[-1]
    edges = np.arange(pixels + 1) * (length / pixels)  # in samples; sample i sits at i
    position = np.minimum(edges, length - 1)
    left = np.minimum(np.floor(position).astype(np.int64), length - 2)
    frac = (position - left).astype(np.float32)
    edge_values = signals[..., left] * (1.0 - frac) + signals[..., left + 1] * frac
    low = np.minimum(edge_values[..., :-1], edge_values[..., 1:])
    high = np.maximum(edge_values[..., :-1], edge_values[..., 1:])
    starts = np.minimum(np.ceil(edges[:-1]).astype(np.int64), length - 1)
    ends = np.minimum(np.ceil(edges[1:]).astype(np.int64), length)
    inside = ends > starts  # columns with at least one sample strictly inside their span
    if inside.any():
        reduce_at = starts[inside]
        low[..., inside] = np.minimum(low[..., inside], np.minimum.reduceat(signals, reduce_at, axis=-1))
        high[..., inside] = np.maximum(high[..., inside], np.maximum.reduceat(signals, reduce_at, axis=-1))
    return low, high


def render_ecg_image(
    signals: np.ndarray,
    image_size: int | tuple[int, int] = 224,
    *,
    fs: float = 250.0,
    mv_per_row: float = 3.0,
    line_width: float = 1.0,
    supersample: int = 2,
) -> np.ndarray:
    """Rasterise 12-lead segments (B, 12, L) in mV as paper-style plots: float32 (B, 3, H, W) in [0, 1].

    Layout: rows I/aVR/V1/V4, II/aVL/V2/V5, III/aVF/V3/V6 (each column the next quarter of the segment),
    then a lead II rhythm strip. Time spans the full width; each row band spans ``mv_per_row`` mV at
    the paper's 10 mm/mV over a 1 mm / 5 mm grid at 25 mm/s. Traces leaving their band are clipped.
    Anti-aliased by drawing at ``supersample`` times the size and averaging down.
    """
    if fs <= 0 or not math.isfinite(fs):
        raise UserError(f"sampling rate must be a positive number, got {fs}")
    if mv_per_row <= 0 or line_width <= 0 or supersample < 1:
        raise UserError("mv_per_row and line_width must be positive and supersample at least 1")
    height, width = _size(image_size)
    signals = np.asarray(signals, dtype=np.float32)
    images = np.empty((signals.shape[0], 3, height, width), dtype=np.float32)
    # Small chunks keep the supersampled canvas in cache: 8 at a time is ~2x faster than 64 at once.
    for start in range(0, signals.shape[0], RENDER_CHUNK):
        chunk = signals[start : start + RENDER_CHUNK]
        images[start : start + len(chunk)] = _render_chunk(
            chunk, height, width, fs, mv_per_row, line_width, supersample
        )
    return images


def _render_chunk(
    signals: np.ndarray,
    height: int,
    width: int,
    fs: float,
    mv_per_row: float,
    line_width: float,
    supersample: int,
) -> np.ndarray:
    batch, _, length = signals.shape
    canvas_h, canvas_w = height * supersample, width * supersample

    low, high = _pixel_envelopes(signals, canvas_w)
    columns = np.arange(canvas_w)
    quarter = (columns * 4) // canvas_w
    band_leads = [np.asarray(row)[quarter] for row in PAPER_LAYOUT] + [np.full(canvas_w, RHYTHM_LEAD)]

    band_h = canvas_h / 4
    px_per_mv = band_h / mv_per_row
    half_line = line_width * supersample / 2
    coverage = np.empty((batch, canvas_h, canvas_w), dtype=bool)
    batch_index, column_index = np.arange(batch)[:, None], columns[None, :]
    for band, leads in enumerate(band_leads):
        row_start, row_end = round(band * band_h), round((band + 1) * band_h)
        rows = row_end - row_start
        baseline = (band + 0.5) * band_h - row_start
        top = baseline - high[:, leads, columns] * px_per_mv - half_line  # (B, W): image y grows downward
        bottom = baseline - low[:, leads, columns] * px_per_mv + half_line
        # Row j (covering [j, j + 1)) is inked when it overlaps [top, bottom]: floor(top) <= j < ceil(bottom).
        # Mark +1 at the first inked row and -1 after the last, then a cumulative sum down each column
        # fills the span: one pass over the band instead of two comparisons and an AND.
        first = np.clip(np.floor(top), 0, rows).astype(np.intp)
        stop = np.clip(np.ceil(bottom), 0, rows).astype(np.intp)
        marks = np.zeros((batch, rows + 1, canvas_w), dtype=np.int8)
        marks[batch_index, first, column_index] = 1
        marks[batch_index, stop, column_index] -= 1
        np.cumsum(marks[:, :rows], axis=1, dtype=np.int8, out=marks[:, :rows])
        coverage[:, row_start:row_end] = marks[:, :rows].view(bool)

    # Box-filter down to the output size by summing strided views (far faster than a multi-axis sum).
    inked = coverage.view(np.uint8)
    count_type = np.uint8 if supersample * supersample < 256 else np.uint16
    rows_summed = np.zeros((batch, height, canvas_w), dtype=count_type)
    for offset in range(supersample):
        rows_summed += inked[:, offset::supersample]
    summed = np.zeros((batch, height, width), dtype=count_type)
    for offset in range(supersample):
        summed += rows_summed[:, :, offset::supersample]
    alpha = summed.astype(np.float32) * (1.0 / (supersample * supersample))

    # Blend: grid * (1 - alpha) + trace * alpha == grid + alpha * (trace - grid).
    grid = _paper_grid(height, width, supersample, length / fs, mv_per_row)
    ink_minus_paper = np.asarray(TRACE_RGB, dtype=np.float32)[:, None, None] - grid
    image = alpha[:, None] * ink_minus_paper[None]
    image += grid[None]
    return image


def publication_figure(
    signal: np.ndarray, path: str | Path, *, fs: float = 250.0, title: str | None = None
) -> Path:
    """A 12-lead figure for people (lead names, calibration, vector output) via ecg_plot: .svg, or .png/.pdf
    through matplotlib. Slow; use ``render_ecg_image`` for model inputs."""
    try:
        import ecg_plot
    except ImportError:
        raise UserError("publication figures need ecg_plot: pip install 'ecgbench-elm[plot]'") from None
    batch, single = as_signal_batch(signal)
    if not single:
        raise UserError("publication_figure draws one segment (12, L)")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".svg", ".png", ".pdf", ".jpg", ".jpeg"):
        raise UserError(f"figure format must be .svg, .png, .pdf or .jpg, not {suffix or 'none'!r}")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    chart = ecg_plot.plot(
        batch[0].numpy(), sample_rate=fs, lead_names=list(LEAD_NAMES), layout="12lead", title=title
    )
    if suffix == ".svg":
        path.write_text(chart.to_svg(), encoding="utf-8")
        return path
    figure, _ = chart.to_matplotlib()
    figure.savefig(path, dpi=200)
    return path


# -- augmentation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageAugment:
    """Small random changes a scanned or photographed printout shows: shift, rotation, scale,
    brightness, contrast, sensor noise. Areas moved in from outside are paper white."""

    max_shift: float = 0.03  # fraction of the image size
    max_rotation_deg: float = 3.0
    scale_range: tuple[float, float] = (0.95, 1.05)
    brightness: float = 0.08
    contrast: float = 0.1
    noise_std: float = 0.01

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch = images.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(batch, generator=generator)

        angle = uniform(-self.max_rotation_deg, self.max_rotation_deg) * (math.pi / 180)
        scale = uniform(*self.scale_range)
        shift = torch.stack([uniform(-self.max_shift, self.max_shift) * 2 for _ in range(2)], dim=1)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
        # Sample the ink (1 - image) with zero padding, so whatever enters from outside is white paper.
        out = 1.0 - F.grid_sample(
            1.0 - images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        contrast = uniform(1 - self.contrast, 1 + self.contrast).to(images)[:, None, None, None]
        brightness = uniform(-self.brightness, self.brightness).to(images)[:, None, None, None]
        out = (out - mean) * contrast + mean + brightness
        if self.noise_std > 0:
            noise = torch.randn(out.shape, generator=generator).to(images)
            out = out + self.noise_std * noise
        return out.clamp_(0.0, 1.0)


# -- the one entry point -------------------------------------------------------------------------


def to_representation(
    signal: np.ndarray | torch.Tensor,
    kind: Kind = "signal",
    image_size: int | tuple[int, int] = 224,
    *,
    fs: float = 250.0,
    tokenizer: Any = None,
    augment: ImageAugment | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """One segment (12, L) or a batch (B, 12, L) in mV as the representation ``kind``.

    Returns a tensor with the input's batch shape: signal (12, L) / (B, 12, L); stacked and image
    (3, H, W) / (B, 3, H, W) float32 in [0, 1]; tokens a 1-D int64 tensor, or a list of them for a
    batch (lengths differ). ``fs`` sets the image's time scale; ``augment`` applies to images only.
    """
    if kind not in KINDS:
        raise UserError(f"unknown representation {kind!r}; choose one of {', '.join(KINDS)}")
    batch, single = as_signal_batch(signal)
    if augment is not None and kind not in ("stacked", "image"):
        raise UserError(f"image augmentation applies to 'stacked' or 'image', not {kind!r}")
    if kind == "signal":
        out = batch
    elif kind == "tokens":
        if tokenizer is None:
            raise UserError("the 'tokens' representation needs an ECG-Byte tokenizer (tokenizer=...)")
        ids = [torch.from_numpy(np.asarray(tokenizer.encode(row.numpy()), dtype=np.int64)) for row in batch]
        return ids[0] if single else ids
    elif kind == "stacked":
        out = stacked_signal(batch, image_size)
    else:
        out = torch.from_numpy(render_ecg_image(batch.numpy(), image_size, fs=fs))
    if augment is not None:
        out = augment(out, generator)
    return out[0] if single else out
