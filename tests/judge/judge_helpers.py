"""Helpers for the judge tests: predictions files in the schema `infer generate` writes (its own
``prediction_row``), and a tiny random-init PairRM checkpoint in the published llm-blender/PairRM-hf layout
(deberta-v2 config with the PairRM fields, the <|source|>/<|candidate1|>/<|candidate2|>/<|candidate|> added
tokens, ``pretrained_model.*`` + ``head_layer.*`` weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecgbench.data.conversations import Conversation
from ecgbench.data.dataset import ConversationItem
from ecgbench.infer.generate import Decoding, prediction_row

CHECKPOINT_A, CHECKPOINT_B = "runs/a/best#1111111111111111", "runs/b/best#2222222222222222"
PAIRRM_TOKENS = ("<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>")


def prediction_lines(
    conversations: list[Conversation], answers: list[str], checkpoint: str, *, turn: int = 1, **decoding: Any
) -> list[dict[str, Any]]:
    """One predictions line per conversation (answering ``turn``), as `infer generate` writes it."""
    rows = []
    for conversation, answer in zip(conversations, answers, strict=True):
        item = ConversationItem(
            conversation_id=conversation.conversation_id,
            source=conversation.source,
            turns=conversation.turns,
            ecgs=[],
            ecg_refs=conversation.ecgs,
            question_type=conversation.question_type,
            answer_options=conversation.answer_options,
            split=conversation.split,
        )
        record = Decoding(**decoding).record()
        rows.append({**prediction_row(item, turn, "real", record, checkpoint), "prediction": answer})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_pairrm(path: Path, words: list[str]) -> Path:
    """A 2-layer DeBERTa-v2 PairRM (hidden 32), a Unigram vocabulary of ``words``, random init (seed 0)."""
    import torch
    from transformers import DebertaV2Config, DebertaV2Tokenizer

    from ecgbench.judge.judges.reward import pairrm_class

    letters = sorted({ch for word in words for ch in word})
    vocab = [(t, 0.0) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]
    vocab += [(f"▁{w}", -2.0) for w in sorted(set(words))] + [(ch, -8.0) for ch in letters] + [("▁", -4.0)]
    tokenizer = DebertaV2Tokenizer(vocab=vocab)
    tokenizer.add_special_tokens({"additional_special_tokens": list(PAIRRM_TOKENS)})
    ids = dict(zip(PAIRRM_TOKENS, tokenizer.convert_tokens_to_ids(list(PAIRRM_TOKENS)), strict=True))
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=256,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
        type_vocab_size=0,
        max_relative_positions=-1,
        initializer_range=0.2,
        architectures=["DebertaV2PairRM"],
        n_tasks=1,
        drop_out=0.05,
        source_prefix_id=ids["<|source|>"],
        cand1_prefix_id=ids["<|candidate1|>"],
        cand2_prefix_id=ids["<|candidate2|>"],
        cand_prefix_id=ids["<|candidate|>"],
    )  # fmt: skip  (PairRM-hf's config.json, scaled down)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = pairrm_class()(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
