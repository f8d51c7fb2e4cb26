from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgbench.errors import UserError
from ecgbench.models.inputs import (
    MAJOR_RGB,
    ImageAugment,
    publication_figure,
    render_ecg_image,
    stacked_signal,
    to_representation,
)


def ink(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Darkness per pixel (H, W) of a (3, H, W) image: 1 = black trace, ~0 = paper."""
    return 1.0 - np.asarray(image).min(axis=0)


# -- signal ---------------------------------------------------------------------------------------


def test_signal_keeps_values_and_batch_shape(real_segments: np.ndarray) -> None:
    single = to_representation(real_segments[0], "signal")
    batch = to_representation(real_segments, "signal")
    assert single.shape == (12, 1250) and batch.shape == (5, 12, 1250)
    assert single.dtype == torch.float32
    np.testing.assert_array_equal(batch.numpy(), real_segments)


@pytest.mark.parametrize("kind", ["signal", "stacked", "image"])
def test_bad_signals_are_one_line_user_errors(real_segments: np.ndarray, kind: str) -> None:
    with_nan = real_segments[0].copy()
    with_nan[4, 100] = np.nan
    with pytest.raises(UserError, match="NaN"):
        to_representation(with_nan, kind)
    with pytest.raises(UserError, match="12-lead"):
        to_representation(real_segments[0, :8], kind)
    with pytest.raises(UserError, match="12-lead"):
        to_representation(real_segments[0, 0], kind)


def test_unknown_kind_and_misused_options(real_segments: np.ndarray) -> None:
    with pytest.raises(UserError, match="unknown representation"):
        to_representation(real_segments[0], "spectrogram")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="augmentation"):
        to_representation(real_segments[0], "signal", augment=ImageAugment())
    with pytest.raises(UserError, match="tokenizer"):
        to_representation(real_segments[0], "tokens")
    with pytest.raises(UserError, match="sampling rate"):
        to_representation(real_segments[0], "image", fs=0.0)
    with pytest.raises(UserError, match="image size"):
        to_representation(real_segments[0], "image", image_size=4)


# -- stacked --------------------------------------------------------------------------------------


def test_stacked_puts_four_leads_per_channel_without_mixing_them(real_segments: np.ndarray) -> None:
    image = to_representation(real_segments, "stacked", image_size=224)
    assert image.shape == (5, 3, 224, 224)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    # Each 56-row band repeats one lead: rows inside a band are identical.
    for band in range(4):
        rows = image[:, :, band * 56 : (band + 1) * 56]
        assert torch.equal(rows, rows[:, :, :1].expand_as(rows))
    # Lead II (channel 0, band 1) keeps its R peaks where the signal has them (time axis only resized).
    lead_ii = real_segments[0, 1]
    band = image[0, 0, 56].numpy()
    assert abs(int(np.argmax(band)) - int(np.argmax(lead_ii)) * 224 / 1250) <= 2
    # Each lead is scaled by its own range, so even the smallest lead spans much of [0, 1] (anti-aliasing
    # lowers the narrow QRS peaks a little); one scale for all leads would squash the small ones.
    per_lead = image[0].reshape(3, 4, 56, 224)[:, :, 0].reshape(12, 224)
    assert ((per_lead.amax(dim=1) - per_lead.amin(dim=1)) > 0.4).all()
    ranges = real_segments[0].max(axis=1) - real_segments[0].min(axis=1)
    assert ranges.min() / ranges.max() < 0.4


def test_stacked_flat_lead_is_mid_grey(real_segments: np.ndarray) -> None:
    signal = real_segments[:1].copy()
    signal[0, 5] = 0.0  # a disconnected aVF (channel 1, band 1)
    image = stacked_signal(torch.from_numpy(signal), 64)
    assert torch.allclose(image[0, 1, 16:32], torch.full((16, 64), 0.5))


# -- paper image ----------------------------------------------------------------------------------


def trace_centre(darkness_column: np.ndarray) -> float:
    """Image y (pixel centres at j + 0.5) of the trace in one pixel column; the grid is lighter than 0.5."""
    rows = np.nonzero(darkness_column > 0.5)[0]
    return float(np.average(rows + 0.5, weights=darkness_column[rows]))


def test_image_draws_baselines_and_scales_amplitude_like_paper() -> None:
    flat = np.zeros((1, 12, 1250), dtype=np.float32)
    darkness = ink(render_ecg_image(flat, 224, fs=250.0)[0])
    band_h = 224 / 4
    for band in range(4):
        rows = slice(round(band * band_h), round((band + 1) * band_h))
        assert abs(round(band * band_h) + trace_centre(darkness[rows, 100]) - (band + 0.5) * band_h) <= 0.5
    # +1 mV moves the trace up by a third of a band (3 mV per row band at 10 mm/mV).
    raised = ink(render_ecg_image(flat + 1.0, 224, fs=250.0)[0])
    assert abs(trace_centre(raised[: round(band_h), 100]) - (0.5 * band_h - band_h / 3)) <= 0.5


def test_image_keeps_a_one_sample_spike_that_point_sampling_would_drop() -> None:
    signal = np.zeros((1, 12, 1250), dtype=np.float32)
    signal[0, 1, 613] = 1.2  # lead II, between two pixel centres of a 224-wide image
    darkness = ink(render_ecg_image(signal, 224)[0])
    column = round(613 * 224 / 1250)
    rhythm_band = darkness[168:224, column - 1 : column + 2]
    baseline_row = 196 - 168
    # Ink well above the baseline: the spike's envelope reaches about 1.2 mV * 18.7 px/mV = 22 px up.
    inked_rows = np.nonzero(rhythm_band.max(axis=1) > 0.3)[0]
    assert baseline_row - inked_rows.min() >= 18


def test_image_of_real_segments(real_segments: np.ndarray) -> None:
    images = to_representation(real_segments, "image", image_size=224)
    assert images.shape == (5, 3, 224, 224) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    # Deterministic, and a batch renders exactly as its segments one by one.
    again = to_representation(real_segments[2], "image", image_size=224)
    assert torch.equal(images[2], again)
    for image in images:
        darkness = ink(image)
        for band in range(4):
            assert darkness[band * 56 : (band + 1) * 56].max() > 0.7  # every row band has a trace
        # Mostly paper: the trace covers a small fraction of the pixels.
        assert (darkness > 0.5).mean() < 0.1
    # The paper grid is at paper scale: 5 s at 25 mm/s is 125 mm, so 25 major (5 mm) lines across.
    grid = render_ecg_image(np.zeros((1, 12, 1250), np.float32), 448, supersample=1)[0]
    major_columns = np.isclose(grid[1], MAJOR_RGB[1]).mean(axis=0) > 0.9
    assert int(major_columns.sum()) == 25


def test_image_non_square_size(real_segments: np.ndarray) -> None:
    image = to_representation(real_segments[0], "image", image_size=(160, 320))
    assert image.shape == (3, 160, 320)


# -- augmentation ---------------------------------------------------------------------------------


def test_augment_is_reproducible_and_fills_with_paper(real_segments: np.ndarray) -> None:
    augment = ImageAugment(max_shift=0.1, noise_std=0.0, brightness=0.0, contrast=0.0)
    clean = to_representation(real_segments[0], "image")
    first = to_representation(
        real_segments[0], "image", augment=augment, generator=torch.Generator().manual_seed(3)
    )
    second = to_representation(
        real_segments[0], "image", augment=augment, generator=torch.Generator().manual_seed(3)
    )
    other = to_representation(
        real_segments[0], "image", augment=augment, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(first, second)
    assert not torch.equal(first, other) and not torch.equal(first, clean)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    # No black borders: the area shifted in from outside the page is light.
    borders = torch.cat([first[:, :2].flatten(), first[:, -2:].flatten(), first[:, :, :2].flatten()])
    assert float(borders.mean()) > 0.8


# -- tokens ---------------------------------------------------------------------------------------


def test_tokens_delegate_to_the_ecg_byte_tokenizer(real_segments: np.ndarray) -> None:
    from ecgbench.tokenizer import ECGByteTokenizer

    tokenizer = ECGByteTokenizer.train(real_segments, 50)
    single = to_representation(real_segments[0], "tokens", tokenizer=tokenizer)
    batch = to_representation(real_segments, "tokens", tokenizer=tokenizer)
    assert single.dtype == torch.int64
    np.testing.assert_array_equal(single.numpy(), tokenizer.encode(real_segments[0]))
    assert isinstance(batch, list) and len(batch) == 5
    assert all(int(ids.max()) < tokenizer.vocab_size for ids in batch)


# -- publication figure ---------------------------------------------------------------------------


def test_publication_figure_svg_and_bad_suffix(real_segments: np.ndarray, tmp_path) -> None:
    path = publication_figure(real_segments[0], tmp_path / "ecg.svg", fs=250.0, title="HR06000")
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<svg") and "aVR" in text and "V6" in text
    with pytest.raises(UserError, match="format"):
        publication_figure(real_segments[0], tmp_path / "ecg.bmp")
    with pytest.raises(UserError, match="does not exist"):
        publication_figure(real_segments[0], tmp_path / "missing" / "ecg.svg")
    with pytest.raises(UserError, match="one segment"):
        publication_figure(real_segments, tmp_path / "ecg.svg")
