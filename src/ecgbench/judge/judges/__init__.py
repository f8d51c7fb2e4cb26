"""Pluggable judges behind one small interface (:class:`Judge`): which of two answers is better.

``load_judge(spec)`` builds one from a spec:

- ``reference[:METRIC]``: the answer closer to the gold answer by one of our metrics (default ``rouge-l``;
  ``rouge-1``, ``rouge-2``, ``bleu``, ``meteor``, ``token-f1``, ``exact-match``, ``normalized-match``);
- ``llm:MODEL``: a local causal LM as judge, with a fixed, versioned prompt (``llm:smollm2`` = the offline
  SmolLM2-135M-Instruct asset; any name ``ecgbench.models.llm.load_llm`` takes);
- ``reward:MODEL``: a PairRM-style pairwise reward model (a local folder or a hub id such as
  ``llm-blender/PairRM-hf``).

Heavy libraries (torch, transformers, the metrics) load only when a judge is built.
"""

from __future__ import annotations

from ecgbench.errors import UserError
from ecgbench.judge.judges.base import (
    UNPARSABLE,
    Judge,
    JudgeItem,
    OnDisagreement,
    RankQuestion,
    Verdict,
    judge_both_orders,
    rank_candidates,
    rank_many,
)

KINDS = ("reference", "llm", "reward")

__all__ = [
    "KINDS",
    "UNPARSABLE",
    "Judge",
    "JudgeItem",
    "OnDisagreement",
    "RankQuestion",
    "Verdict",
    "judge_both_orders",
    "load_judge",
    "rank_candidates",
    "rank_many",
]


def load_judge(spec: str, *, device: str = "cpu", batch_size: int = 8) -> Judge:
    """The judge a spec names (see the module notes); a bad spec is a one-line error."""
    kind, _, name = spec.partition(":")
    if kind == "reference":
        from ecgbench.judge.judges.reference import DEFAULT_METRIC, ReferenceJudge

        return ReferenceJudge(name or DEFAULT_METRIC)
    if kind in ("llm", "reward") and not name.strip():
        raise UserError(f"judge {spec!r} names no model: {kind}:MODEL (a local folder or a hub id)")
    if kind == "llm":
        from ecgbench.judge.judges.llm import LLMJudge

        return LLMJudge(name, device=device, batch_size=batch_size)
    if kind == "reward":
        from ecgbench.judge.judges.reward import RewardJudge

        return RewardJudge(name, device=device, batch_size=batch_size)
    raise UserError(
        f"unknown judge {spec!r}: use reference[:METRIC], llm:MODEL (llm:smollm2 offline) or reward:MODEL"
    )
