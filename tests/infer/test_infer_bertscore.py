"""BERTScore plumbing: the MiniLM stand-in equals bert-score called directly, empty answers score 0, the
RoBERTa path restores bert-score's prefix space, and a missing roberta-large is named.

roberta-large has no offline copy; the RoBERTa code path is checked on a tiny random RoBERTa with GPT-2's real
byte-level BPE vocabulary (RoBERTa's vocabulary is GPT-2's), so only the plumbing is under test there.
"""

from __future__ import annotations

import json
from pathlib import Path

import bert_score
import numpy as np
import pytest
import torch

from ecgbench.errors import UserError
from ecgbench.infer.metrics import resolve_similarity_model, similarity_scores
from ecgbench.infer.metrics.bertscore import MINILM, SimilarityModel, load_tokenizer
from ecgbench.models import offline_assets


@pytest.fixture(scope="module")
def minilm() -> SimilarityModel:
    model, note = resolve_similarity_model("minilm")
    assert model is not None and note is None
    return model


def _tiny_roberta(directory: Path, *, prefix_space: bool) -> Path:
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    data = json.loads((offline_assets.tokenizer_dir("gpt2") / "tokenizer.json").read_text(encoding="utf-8"))
    # RoBERTa's layout: <s> <pad> </s> <unk> first (position embeddings pad at <pad>'s id), <mask> last
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({piece: i + 4 for piece, i in data["model"]["vocab"].items()})
    vocab["<mask>"] = len(vocab)
    tokenizer = RobertaTokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in data["model"]["merges"]],
        model_max_length=128,
        add_prefix_space=prefix_space,
    )
    tokenizer.save_pretrained(directory)
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"), prefix_space=False)


def test_minilm_equals_bert_score_called_directly(minilm: SimilarityModel, pulse_reports: list[str]) -> None:
    refs = pulse_reports[:12]
    hyps = [pulse_reports[(i * 17) % 100] for i in range(12)]
    ours = similarity_scores(minilm, refs, hyps, device="cpu")
    (p, r, f), hash_string = bert_score.score(
        hyps, refs, model_type=minilm.path, num_layers=6, device="cpu", return_hash=True
    )
    np.testing.assert_allclose(ours, torch.stack([p, r, f], dim=1).numpy(), rtol=1e-6)
    assert hash_string.replace(minilm.path, MINILM) == minilm.hash()


def test_empty_answers_score_zero_and_leave_the_others_alone(
    minilm: SimilarityModel, pulse_reports: list[str]
) -> None:
    refs = pulse_reports[:4]
    hyps = [pulse_reports[50], "", "   ", pulse_reports[51]]
    scores = similarity_scores(minilm, refs, hyps, device="cpu")
    assert scores[1].tolist() == scores[2].tolist() == [0.0, 0.0, 0.0]
    alone = similarity_scores(minilm, [refs[0], refs[3]], [hyps[0], hyps[3]], device="cpu")
    np.testing.assert_allclose(scores[[0, 3]], alone, rtol=1e-6)
    assert similarity_scores(minilm, ["a"], [""]).tolist() == [[0.0, 0.0, 0.0]]


def test_roberta_tokenizer_gets_the_prefix_space_bert_score_asks_for(tiny_roberta: Path) -> None:
    from bert_score.utils import sent_encode
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tiny_roberta, use_fast=False)
    ours = load_tokenizer(str(tiny_roberta))
    # transformers 5 ignores bert-score's per-call add_prefix_space=True ...
    assert sent_encode(plain, "sinus rhythm") == plain.encode("sinus rhythm")
    # ... which under transformers 4 put a space before the first word; the loaded tokenizer does that again
    assert sent_encode(ours, "sinus rhythm") == plain.encode(" sinus rhythm") != plain.encode("sinus rhythm")


def test_roberta_path_equals_bert_score_with_that_tokenizer(tiny_roberta: Path, tmp_path: Path) -> None:
    with_prefix = _tiny_roberta(tmp_path / "prefix", prefix_space=True)  # same seed: same weights
    refs = ["sinus rhythm. normal ecg", "left axis deviation", "atrial fibrillation with rapid response"]
    hyps = ["sinus rhythm, normal ecg", "right bundle branch block", "atrial fibrillation"]
    model = SimilarityModel("bertscore", "roberta-large", str(tiny_roberta), 2)
    p, r, f = bert_score.score(hyps, refs, model_type=str(with_prefix), num_layers=2, device="cpu")
    np.testing.assert_allclose(
        similarity_scores(model, refs, hyps, device="cpu"), torch.stack([p, r, f], dim=1).numpy(), rtol=1e-6
    )


def test_resolution_names_missing_roberta_large(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty Hugging Face cache
    with pytest.raises(UserError, match="roberta-large"):
        resolve_similarity_model("bertscore")
    model, note = resolve_similarity_model("auto")
    assert model is not None and model.key == "minilm" and model.name == MINILM and model.num_layers == 6
    assert note is not None and "roberta-large" in note and "minilm_*" in note
    assert "not comparable" in model.describe()["note"]
    assert resolve_similarity_model("off")[0] is None
    with pytest.raises(UserError, match="allowed: auto, bertscore, minilm, off"):
        resolve_similarity_model("bert")


def test_a_given_model_dir_must_be_roberta_large(tiny_roberta: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not roberta-large"):
        resolve_similarity_model("auto", tiny_roberta)
    with pytest.raises(UserError, match=r"no readable config\.json"):
        resolve_similarity_model("bertscore", tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "roberta", "num_hidden_layers": 24, "hidden_size": 1024})
    )
    model, _ = resolve_similarity_model("bertscore", tmp_path)
    assert model is not None and model.key == "bertscore" and model.num_layers == 17
    assert model.hash().startswith("roberta-large_L17_no-idf_version=")
