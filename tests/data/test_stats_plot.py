"""`data stats` and `data plot` on the real prepared sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecgbench.data import plotting, stats
from ecgbench.data.store import SegmentStore
from ecgbench.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_store_stats_on_real_sample(sample_store: Path, tmp_path: Path) -> None:
    store = SegmentStore.open(sample_store)
    result = stats.store_stats([store.index], [store.manifest])
    assert result["segments"] == len(store) and result["records"] == 28
    assert set(result["corpora"]) == {"ptbxl", "cpsc", "csn", "wfdb"}
    assert sum(c["segments"] for c in result["corpora"].values()) == len(store)
    expected_hours = float(store.index.column("duration_s").to_numpy().sum()) / 3600
    assert result["hours"] == pytest.approx(expected_hours)
    # PTB-XL ecg_id 1 is labelled NORM / LVOLT / SR in the bundled ptbxl_database.csv row.
    assert {"NORM", "LVOLT", "SR"} <= set(result["labels"])
    assert result["quality"]["segments_with_flat_leads"] == store.manifest["counts"]["flat_lead_segments"]
    written = stats.write_stats({"store": result}, tmp_path / "stats")
    assert json.loads((tmp_path / "stats" / "stats.json").read_text())["store"]["records"] == 28
    for png in (p for p in written if p.suffix == ".png"):
        assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_rejected_counts_from_manifest() -> None:
    manifest = {"corpus": "ptbxl", "counts": {"rejected": {"too_short": 2, "nan_gap": 1}}}
    assert stats.rejected_counts(manifest) == {"ptbxl: too_short": 2, "ptbxl: nan_gap": 1}
    assert stats.rejected_counts({}) == {}


def test_twelve_lead_figure_has_paper_scale(sample_store: Path, tmp_path: Path) -> None:
    store = SegmentStore.open(sample_store)
    signal = store.read(0)
    path = plotting.plot_segment(signal, store.fs, tmp_path / "ecg.png", dpi=100)
    with Image.open(path) as image:
        width, height = image.size
    # 25 mm/s: the page is the strip (seconds x 25 mm) plus fixed margins, drawn 1:1 in millimetres.
    seconds = signal.shape[1] / store.fs
    width_mm = 2 * plotting.MARGIN_MM + plotting.CALIBRATION_MM + seconds * plotting.SPEED_MM_S
    assert width == round(width_mm / plotting.MM_PER_INCH * 100)
    assert height == round((2 * plotting.MARGIN_MM + 4 * plotting.ROW_MM) / plotting.MM_PER_INCH * 100)


def test_ecg_plot_renderer(sample_store: Path, tmp_path: Path) -> None:
    store = SegmentStore.open(sample_store)
    png = plotting.plot_segment(store.read(1), store.fs, tmp_path / "a.png", renderer="ecg-plot")
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    svg = plotting.plot_segment(store.read(1), store.fs, tmp_path / "a.svg", renderer="ecg-plot")
    assert svg.read_text().lstrip().startswith("<")


def test_plot_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="12, samples"):
        plotting.plot_segment(np.zeros((3, 100)), 250, tmp_path / "x.png")
    with pytest.raises(UserError, match=r"\.png, \.svg or \.pdf"):
        plotting.plot_segment(np.zeros((12, 100)), 250, tmp_path / "x.gif")
