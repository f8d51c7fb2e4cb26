"""LLM-as-judge: a local causal LM reads the question and both answers and names the better one.

Any chat model :func:`ecgbench.models.llm.load_llm` loads (a local directory, a ``.gguf`` file, a registry
name, a hub id; ``smollm2`` = the offline SmolLM2-135M-Instruct asset), never with remote code. The judging
prompt is fixed (:data:`JUDGE_SYSTEM`, :data:`JUDGE_TEMPLATE`, :data:`REFERENCE_LINE`) and versioned
(:data:`LLM_JUDGE_VERSION`, bumped whenever one of those texts changes); decoding is greedy and batched
(left padding).

The reply is parsed strictly by :data:`VERDICT_PATTERN`: after leading whitespace it must begin with
``A``, ``B`` or ``tie`` (``Tie``, ``TIE``) not followed by a letter or digit, so ``A``, ``B.``, ``tie`` and
``A: it names the rhythm`` parse and ``Answer A``, ``a``, ``Both`` or ``Ambiguous`` do not. An unparsable
reply is a verdict with winner None (counted by the caller), never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ecgbench.judge.judges.base import UNPARSABLE, JudgeItem, Verdict

LLM_JUDGE_VERSION = "llm-pairwise-v1"
JUDGE_SYSTEM = "You are an expert cardiologist who grades answers to questions about ECGs."
JUDGE_TEMPLATE = """A conversation about an ECG (<ecg> marks the ECG, which is not shown):
{conversation}
{reference}
Answer A: {answer_a}
Answer B: {answer_b}

Which answer to the last question is more correct? Reply with one word: A, B or tie."""
REFERENCE_LINE = "Correct answer, by an expert: {reference}\n"
VERDICT_PATTERN = re.compile(r"\s*(A|B|tie|Tie|TIE)(?![A-Za-z0-9])")
MAX_NEW_TOKENS = 4  # a verdict word and its punctuation; a longer reply is cut (its start still parses)
OFFLINE_ALIAS = "smollm2"


def parse_verdict(reply: str) -> Verdict:
    """The verdict of a judge's reply, or the unparsable verdict (see the module notes)."""
    match = VERDICT_PATTERN.match(reply)
    if match is None:
        return UNPARSABLE
    word = match.group(1).lower()
    if word == "tie":
        return Verdict("tie", 0.5, 0.5)
    return Verdict("a", 1.0, 0.0) if word == "a" else Verdict("b", 0.0, 1.0)


def render_conversation(turns: Sequence[dict[str, str]]) -> str:
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "\n".join(f"{names.get(t['role'], t['role'])}: {t['content']}" for t in turns)


def judging_messages(item: JudgeItem) -> list[dict[str, str]]:
    """The chat the judge model answers for one item."""
    reference = REFERENCE_LINE.format(reference=item.reference) if item.reference is not None else ""
    text = JUDGE_TEMPLATE.format(
        reference=reference,
        conversation=render_conversation(item.prompt),
        answer_a=item.answer_a,
        answer_b=item.answer_b,
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": text}]


class LLMJudge:
    """``llm:MODEL``: a causal LM names the better answer (see the module notes)."""

    def __init__(self, name: str, *, device: str = "cpu", batch_size: int = 8) -> None:
        from ecgbench.models.llm import OFFLINE_SMOLLM2, load_llm

        model_name = OFFLINE_SMOLLM2 if name == OFFLINE_ALIAS else name
        self.id = f"llm:{model_name}"
        self.version = LLM_JUDGE_VERSION
        self.batch_size = batch_size
        llm = load_llm(model_name)
        self.tokenizer: Any = llm.tokenizer
        self.model: Any = llm.model.to(device).eval()
        self.device = device

    def replies(self, items: Sequence[JudgeItem]) -> list[str]:
        """The judge model's raw replies, greedy, ``batch_size`` prompts at a time."""
        import torch

        tokenizer = self.tokenizer
        prompts = [
            tokenizer.apply_chat_template(judging_messages(item), tokenize=False, add_generation_prompt=True)
            for item in items
        ]
        out: list[str] = []
        padding_side = tokenizer.padding_side
        tokenizer.padding_side = "left"  # generation continues every row from its last real token
        try:
            for start in range(0, len(prompts), self.batch_size):
                batch = tokenizer(
                    prompts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,  # the chat template wrote them
                ).to(self.device)
                with torch.inference_mode():
                    generated = self.model.generate(
                        **batch,
                        max_new_tokens=MAX_NEW_TOKENS,
                        do_sample=False,
                        temperature=None,
                        top_p=None,
                        top_k=None,
                    )
                new = generated[:, batch["input_ids"].shape[1] :]
                out += tokenizer.batch_decode(new, skip_special_tokens=True)
        finally:
            tokenizer.padding_side = padding_side
        return out

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return [parse_verdict(reply) for reply in self.replies(items)] if items else []
