"""A pairwise reward ranker in the PairRM style (LLM-Blender's ``llm-blender/PairRM-hf``), in transformers 5.

PairRM is a DeBERTa-v2 cross-encoder that reads the question and both candidates in one sequence and
outputs a preference logit (positive: the first candidate is better). llm-blender, its own package, does not
import with transformers 5, so the model is written here against the checkpoint's published format:

- ``config.json``: ``model_type`` ``deberta-v2`` plus ``n_tasks``, ``drop_out``, ``source_prefix_id``,
  ``cand1_prefix_id``, ``cand2_prefix_id`` (the ids of the added tokens ``<|source|>``, ``<|candidate1|>``,
  ``<|candidate2|>``);
- weights: ``pretrained_model.*`` (a ``DebertaV2Model``) and ``head_layer.{1,4}.{weight,bias}`` (dropout,
  Linear(2H, H), tanh, dropout, Linear(H, n_tasks));
- input: ``encode("<|source|>" + source)`` cut at 1224 tokens, then ``encode("<|candidate1|>" + A)`` and
  ``encode("<|candidate2|>" + B)`` each cut at half of what is left of 2048, concatenated (each piece with
  the tokenizer's own [CLS] ... [SEP]);
- output: the head reads [source token, candidate token] final hidden states of each candidate; the logit
  is the mean over tasks of head(source, A) - head(source, B).

The two candidates are not interchangeable inside the sequence, so the raw logit of (A, B) is not exactly
minus that of (B, A). This judge antisymmetrises it, as llm-blender's ``compare`` does in its default
``[A,B]+[B,A]`` mode: logit = (f(A, B) - f(B, A)) / 2, one forward pass over both orders, so swapping
the answers flips the sign exactly. The verdict is the sign (0: tie); the scores are the probabilities
sigmoid(+-logit) that each answer is the better one. The source is the question (a multi-turn prompt:
``USER: ...`` / ``ASSISTANT: ...`` lines); the ranker never reads ``item.reference``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.judge.judges.base import JudgeItem, Verdict

REWARD_VERSION = "pairrm-v1"
SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX = "<|source|>", "<|candidate1|>", "<|candidate2|>"
SOURCE_MAX_LENGTH, CANDIDATE_MAX_LENGTH = 1224, 412  # PairRM's training lengths (2048 in all)
PAIRRM_CONFIG_FIELDS = ("n_tasks", "drop_out", "source_prefix_id", "cand1_prefix_id", "cand2_prefix_id")


@cache
def pairrm_class() -> type:
    """The PairRM model class (built on first use: torch and transformers load only here)."""
    import torch
    from torch import nn
    from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Model, DebertaV2PreTrainedModel

    class PairRMModel(DebertaV2PreTrainedModel):  # type: ignore[misc, valid-type]
        base_model_prefix = "pretrained_model"  # the checkpoint's name for the encoder

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.pretrained_model = DebertaV2Model(config)
            hidden = config.hidden_size
            self.head_layer = nn.Sequential(
                nn.Dropout(config.drop_out),
                nn.Linear(2 * hidden, hidden),
                nn.Tanh(),
                nn.Dropout(config.drop_out),
                nn.Linear(hidden, config.n_tasks),
            )
            self.post_init()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            """The preference logit of candidate 1 over candidate 2, one per row."""
            config = self.config
            states = self.pretrained_model(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)

            def at(token_id: int) -> torch.Tensor:  # the hidden state at each row's first such token
                return states[rows, (input_ids == token_id).int().argmax(dim=1)]

            source = at(config.source_prefix_id)
            left = self.head_layer(torch.cat([source, at(config.cand1_prefix_id)], dim=-1))
            right = self.head_layer(torch.cat([source, at(config.cand2_prefix_id)], dim=-1))
            return (left - right).mean(dim=-1)

    return PairRMModel


def _resolve(name: str) -> tuple[str, bool]:
    """(source, whether it is local) of a checkpoint name: a local folder or a hub id ``org/name``."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model folder (no config.json)")
        return str(path), True
    if name.count("/") == 1 and not name.startswith(("/", ".", "~")):
        return name, False
    raise UserError(f"reward model not found: {name!r} is neither a local folder nor a hub id (org/name)")


def render_source(turns: Sequence[dict[str, str]]) -> str:
    """What PairRM reads as the source: the question, or the conversation as role-prefixed lines."""
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n".join(f"{t['role'].upper()}: {t['content']}" for t in turns)


class RewardJudge:
    """``reward:MODEL``: a PairRM-style cross-encoder's preference logit decides (see the module notes)."""

    def __init__(self, name: str, *, device: str = "cpu", batch_size: int = 8) -> None:
        source, local = _resolve(name)  # before importing transformers: a bad path fails at once
        from transformers import AutoConfig, AutoTokenizer

        self.id = f"reward:{name}"
        self.version = REWARD_VERSION
        self.batch_size = batch_size
        self.device = device
        extra = {"local_files_only": True} if local else {}
        try:
            config = AutoConfig.from_pretrained(source, **extra)
            missing = [f for f in PAIRRM_CONFIG_FIELDS if getattr(config, f, None) is None]
            if config.model_type != "deberta-v2" or missing:
                raise UserError(
                    f"{name} is not a PairRM-style reward model (a deberta-v2 config with "
                    f"{', '.join(PAIRRM_CONFIG_FIELDS)}; this one is {config.model_type!r}"
                    + (f" without {', '.join(missing)})" if missing else ")")
                )
            self.tokenizer: Any = AutoTokenizer.from_pretrained(source, **extra)
            model, info = pairrm_class().from_pretrained(
                source, config=config, output_loading_info=True, **extra
            )
        except UserError:
            raise
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if local:
                raise CorruptFileError(f"cannot read reward model {name!r}: {reason}") from None
            raise UserError(f"cannot load reward model {name!r} from the hub: {reason}") from None
        if info["missing_keys"]:  # a random head would judge by chance: refuse it
            raise CorruptFileError(
                f"{name} lacks weights of the PairRM model: {', '.join(sorted(info['missing_keys'])[:4])}"
            )
        self.prefix_ids = {}
        for token, field in ((SOURCE_PREFIX, "source_prefix_id"), (CANDIDATE1_PREFIX, "cand1_prefix_id"),
                             (CANDIDATE2_PREFIX, "cand2_prefix_id")):  # fmt: skip
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if token_id != getattr(config, field):
                raise CorruptFileError(
                    f"{name}: the tokenizer's {token} is id {token_id}, its config's {field} is "
                    f"{getattr(config, field)}"
                )
            self.prefix_ids[token] = token_id
        self.model: Any = model.to(device).eval()

    def encode(self, source: str, candidate1: str, candidate2: str) -> list[int]:
        """One input sequence in PairRM's layout (see the module notes)."""
        tokenizer = self.tokenizer
        source_ids = tokenizer.encode(SOURCE_PREFIX + source, max_length=SOURCE_MAX_LENGTH, truncation=True)
        candidate_max = (SOURCE_MAX_LENGTH + 2 * CANDIDATE_MAX_LENGTH - len(source_ids)) // 2
        first = tokenizer.encode(CANDIDATE1_PREFIX + candidate1, max_length=candidate_max, truncation=True)
        second = tokenizer.encode(CANDIDATE2_PREFIX + candidate2, max_length=candidate_max, truncation=True)
        return source_ids + first + second

    def raw_logits(self, rows: Sequence[tuple[str, str, str]]) -> list[float]:
        """The model's logit for each (source, candidate 1, candidate 2), ``batch_size`` at a time."""
        import torch

        out: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            encoded = [self.encode(*row) for row in rows[start : start + self.batch_size]]
            batch = self.tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt").to(
                self.device
            )
            with torch.inference_mode():
                logits = self.model(batch["input_ids"], batch["attention_mask"])
            out += logits.float().cpu().tolist()
        return out

    def preference_logits(self, items: Sequence[JudgeItem]) -> list[float]:
        """Antisymmetrised logits: positive where answer A is the better one."""
        sources = [render_source(item.prompt) for item in items]
        forward = [(s, item.answer_a, item.answer_b) for s, item in zip(sources, items, strict=True)]
        backward = [(s, item.answer_b, item.answer_a) for s, item in zip(sources, items, strict=True)]
        logits = self.raw_logits(forward + backward)
        return [(ab - ba) / 2 for ab, ba in zip(logits[: len(items)], logits[len(items) :], strict=True)]

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        out = []
        for logit in self.preference_logits(items) if items else []:
            p = 1.0 / (1.0 + math.exp(-logit))
            out.append(Verdict("a" if logit > 0 else "b" if logit < 0 else "tie", p, 1.0 - p))
        return out
