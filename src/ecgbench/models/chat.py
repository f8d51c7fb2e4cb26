"""Conversations to token ids, with labels only on what the assistant says.

The assistant spans come from the chat template itself, never from searching the text: for every
assistant turn k we render the conversation before it with the generation prompt (where the answer
starts) and the conversation through it (where the answer's turn ends); the difference is the span.
The rendered text is then tokenized piece by piece, cut at every span boundary and ECG placeholder,
so the tokens before an answer are exactly the ones :func:`render_prompt` gives at generation time.

Within a span the labels run through the last special token (the end-of-turn marker such as
``<|eot_id|>``, ``<|im_end|>``, ``<end_of_turn>`` or the EOS); whitespace the template writes after it
is formatting and gets no loss.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ecgbench.data.conversations import ECG_PLACEHOLDER
from ecgbench.errors import UserError
from ecgbench.resources import RESOURCES_DIR

IGNORE_INDEX = -100
CHAT_TEMPLATES_DIR = RESOURCES_DIR / "chat_templates"

# Family -> (our template, a token its vocabulary must have for that template to make sense).
_FAMILY_TEMPLATES = {
    "llama": ("llama3.jinja", "<|start_header_id|>"),
    "gemma2": ("gemma2.jinja", "<start_of_turn>"),
    "qwen2": ("chatml.jinja", "<|im_start|>"),
    "gpt2": ("gpt2.jinja", None),
    "opt": ("opt.jinja", None),
}
# Families whose chat format has no system role: the system prompt goes into the first user turn.
_NO_SYSTEM_ROLE = {"gemma2"}


class ConversationError(UserError):
    """A conversation that cannot be formatted (bad roles, placeholder count, inconsistent template)."""


class ConversationTooLongError(ConversationError):
    """Even with ECG runs at their minimum and only the last exchange kept, it exceeds max_length."""


@cache
def _read_template(filename: str) -> str:
    return (CHAT_TEMPLATES_DIR / filename).read_text(encoding="utf-8")


def family_chat_template(tokenizer: Any, family: str) -> str:
    """ecgbench's template for ``family``; the plain GPT-2/OPT style if the vocabulary lacks its tokens."""
    if family not in _FAMILY_TEMPLATES:
        raise UserError(f"unknown model family {family!r} (known: {', '.join(sorted(_FAMILY_TEMPLATES))})")
    filename, needed_token = _FAMILY_TEMPLATES[family]
    if needed_token is not None and needed_token not in tokenizer.get_vocab():
        filename = "opt.jinja" if tokenizer.bos_token else "gpt2.jinja"
    return _read_template(filename)


def chat_template(tokenizer: Any, family: str) -> str:
    """The template a conversation is rendered with: the tokenizer's own, else the family's."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, Mapping):  # some tokenizers carry several named templates
        own = own.get("default")
    return own if own else family_chat_template(tokenizer, family)


def check_turns(
    turns: Sequence[Mapping[str, str]], system: str | None = None
) -> tuple[list[dict[str, str]], str | None]:
    """Validated copies of the turns; a leading system turn is taken as the system prompt."""
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("content"), str):
            raise ConversationError(f"turn {i} must be a mapping with a string 'content'")
        out.append({"role": turn.get("role"), "content": turn["content"]})
    if out and out[0]["role"] == "system":
        if system is not None:
            raise ConversationError("a system prompt was given twice (system= and a leading system turn)")
        system = out.pop(0)["content"]
    if not out:
        raise ConversationError("a conversation needs at least one user turn")
    for i, turn in enumerate(out):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise ConversationError(
                f"turn {i} has role {turn['role']!r}; "
                "turns must alternate user, assistant, ... starting with user"
            )
    return out, system


def _messages(turns: list[dict[str, str]], system: str | None, family: str) -> list[dict[str, str]]:
    if not system:
        return list(turns)
    if family in _NO_SYSTEM_ROLE:
        first = {"role": "user", "content": f"{system}\n\n{turns[0]['content']}"}
        return [first, *turns[1:]]
    return [{"role": "system", "content": system}, *turns]


def _render(
    tokenizer: Any, template: str, conversations: list[list[dict[str, str]]], generation_prompt: bool
) -> list[str]:
    """Render several message lists in one call (the per-call overhead of transformers dominates)."""
    if not conversations:
        return []
    try:
        texts = tokenizer.apply_chat_template(
            conversations, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # jinja errors, raise_exception() in a template
        raise ConversationError(f"the chat template could not render this conversation: {exc}") from None
    return list(texts)


@dataclass
class _Layout:
    """A rendered conversation: its text, the assistant spans and the placeholder positions (characters)."""

    text: str
    spans: list[tuple[int, int]]
    placeholders: list[int]


def _layout(
    tokenizer: Any, family: str, turns: list[dict[str, str]], system: str | None, generation_prompt: bool
) -> _Layout:
    template = chat_template(tokenizer, family)
    answers = [k for k, turn in enumerate(turns) if turn["role"] == "assistant"]
    # Two batched renders: with the generation prompt (where each answer starts) and without (where its
    # turn ends). A conversation ending with an answer is its last "through" text.
    ends_with_answer = bool(answers) and answers[-1] == len(turns) - 1 and not generation_prompt
    prompted = [_messages(turns[:k], system, family) for k in answers]
    plain = [_messages(turns[: k + 1], system, family) for k in answers]
    if generation_prompt:
        prompted.append(_messages(turns, system, family))
    elif not ends_with_answer:
        plain.append(_messages(turns, system, family))
    befores = _render(tokenizer, template, prompted, True)
    throughs = _render(tokenizer, template, plain, False)
    text = befores.pop() if generation_prompt else throughs[-1]
    if not generation_prompt and not ends_with_answer:
        throughs.pop()
    spans: list[tuple[int, int]] = []
    for before, through in zip(befores, throughs, strict=True):
        if not (through.startswith(before) and text.startswith(through)) or (
            spans and spans[-1][1] > len(before)
        ):
            raise ConversationError(
                "the chat template does not render a conversation as a growing prefix, so the assistant "
                "spans cannot be derived from it"
            )
        spans.append((len(before), len(through)))
    placeholders = _placeholder_positions(text, turns, spans)
    return _Layout(text, spans, placeholders)


def _placeholder_positions(text: str, turns: list[dict[str, str]], spans: list[tuple[int, int]]) -> list[int]:
    """Where the <ecg> placeholders the user turns carry landed in the rendered text."""
    expected = sum(t["content"].count(ECG_PLACEHOLDER) for t in turns if t["role"] == "user")
    positions, start = [], 0
    while (found := text.find(ECG_PLACEHOLDER, start)) >= 0:
        positions.append(found)
        start = found + len(ECG_PLACEHOLDER)
    if len(positions) != expected or any(a <= p < b for p in positions for a, b in spans):
        raise ConversationError(
            f"{ECG_PLACEHOLDER} must appear only in user turns (found {len(positions)} in the rendered "
            f"conversation, {expected} in user turns; the system prompt and answers may not contain it)"
        )
    return positions


@dataclass
class _Piece:
    ids: list[int]
    in_span: bool = False
    ecg: int | None = None  # index of the ECG run that goes here


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's special and added tokens.

    Slow on a tokenizer holding thousands of added ECG tokens (transformers builds an object per added
    token), so whoever tokenizes many conversations reads it once and passes it as ``special_ids``."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return frozenset(tokenizer.all_special_ids) | frozenset(int(i) for i in added)


def _pieces(tokenizer: Any, layout: _Layout) -> list[_Piece]:
    """The text cut at span boundaries and placeholders, each piece tokenized on its own."""
    cuts = {0, len(layout.text)}
    for a, b in layout.spans:
        cuts.update((a, b))
    for p in layout.placeholders:
        cuts.update((p, p + len(ECG_PLACEHOLDER)))
    bounds = sorted(cuts)
    starts = {p: i for i, p in enumerate(layout.placeholders)}
    texts = [layout.text[a:b] for a, b in itertools.pairwise(bounds) if a not in starts]
    # one tokenizer call for every text piece: each piece is still tokenized on its own
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    pieces = []
    for a, _ in itertools.pairwise(bounds):
        if a in starts:
            pieces.append(_Piece([], ecg=starts[a]))
        else:
            pieces.append(_Piece(list(next(encoded)), in_span=any(s <= a < e for s, e in layout.spans)))
    return pieces


def _span_labels(tokenizer: Any, ids: list[int], special: frozenset[int]) -> list[int]:
    """Labels for one assistant span: through its last special token; trailing whitespace gets none."""
    last = max((i for i, t in enumerate(ids) if t in special), default=len(ids) - 1)
    tail = ids[last + 1 :]
    if tail and tokenizer.decode(tail).strip() == "":
        return ids[: last + 1] + [IGNORE_INDEX] * len(tail)
    return list(ids)


def _assemble(
    tokenizer: Any,
    pieces: list[_Piece],
    ecg_runs: list[Sequence[int]],
    cap: int | None,
    special: frozenset[int],
) -> tuple[list[int], list[int]]:
    input_ids: list[int] = []
    labels: list[int] = []
    for piece in pieces:
        if piece.ecg is not None:
            run = ecg_runs[piece.ecg]
            run = run if cap is None else run[:cap]
            input_ids += map(int, run)  # only the kept part is converted (a run may be thousands long)
            labels += [IGNORE_INDEX] * len(run)
        else:
            input_ids += piece.ids
            labels += (
                _span_labels(tokenizer, piece.ids, special)
                if piece.in_span
                else [IGNORE_INDEX] * len(piece.ids)
            )
    return input_ids, labels


def _cap_for(runs: list[int], room: int, min_ecg_tokens: int) -> int | None:
    """Largest per-run cap (>= min_ecg_tokens) whose runs fit in ``room`` tokens; None if none does.

    Runs shorter than the cap stay whole, so the longest runs are shortened first.
    """

    def total(cap: int) -> int:
        return sum(min(r, cap) for r in runs)

    longest = max(runs, default=0)
    if total(longest) <= room:
        return longest
    if total(min_ecg_tokens) > room:
        return None
    lo, hi = min_ecg_tokens, longest  # total(lo) fits, total(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) <= room else (lo, mid)
    return lo


def _encode(
    tokenizer: Any,
    family: str,
    turns: Sequence[Mapping[str, str]],
    *,
    max_length: int | None,
    ecg_token_ids: Sequence[Sequence[int]] | None,
    min_ecg_tokens: int,
    system: str | None,
    generation_prompt: bool,
    special_ids: frozenset[int] | None,
) -> tuple[list[int], list[int]]:
    turns_checked, system = check_turns(turns, system)
    last_role = "user" if generation_prompt else "assistant"
    if turns_checked[-1]["role"] != last_role:
        what = (
            "a prompt must end with a user turn"
            if generation_prompt
            else "training turns must end with an answer"
        )
        raise ConversationError(what)
    if min_ecg_tokens < 0 or (max_length is not None and max_length < 1):
        raise UserError("min_ecg_tokens must be >= 0 and max_length >= 1")
    runs = list(ecg_token_ids or [])
    counts = [t["content"].count(ECG_PLACEHOLDER) if t["role"] == "user" else 0 for t in turns_checked]
    if sum(counts) != len(runs):
        raise ConversationError(
            f"{sum(counts)} {ECG_PLACEHOLDER} placeholder(s) in the user turns "
            f"but {len(runs)} ECG token list(s)"
        )
    special = special_token_ids(tokenizer) if special_ids is None else special_ids
    # Try the whole conversation, then without the oldest exchange, ...; the last exchange always stays.
    for drop in range(0, len(turns_checked) - (1 if generation_prompt else 2) + 1, 2):
        kept_turns = turns_checked[drop:]
        kept_runs = runs[sum(counts[:drop]) :]
        pieces = _pieces(tokenizer, _layout(tokenizer, family, kept_turns, system, generation_prompt))
        if max_length is None:
            return _assemble(tokenizer, pieces, kept_runs, None, special)
        text_tokens = sum(len(p.ids) for p in pieces)
        cap = _cap_for([len(r) for r in kept_runs], max_length - text_tokens, min_ecg_tokens)
        if cap is not None:
            return _assemble(tokenizer, pieces, kept_runs, cap, special)
    raise ConversationTooLongError(
        f"conversation does not fit in max_length={max_length} tokens even with ECG runs cut to "
        f"{min_ecg_tokens} tokens and only the last exchange kept"
    )


def tokenize_conversation(
    tokenizer: Any,
    family: str,
    turns: Sequence[Mapping[str, str]],
    *,
    max_length: int,
    ecg_token_ids: Sequence[Sequence[int]] | None = None,
    min_ecg_tokens: int = 0,
    system: str | None = None,
    special_ids: frozenset[int] | None = None,
) -> dict[str, list[int]]:
    """Token ids, labels (-100 outside the answers) and attention mask of a training conversation.

    ``turns`` alternate user / assistant and end with an answer. Each ``<ecg>`` placeholder in a user
    turn is replaced by the matching id list of ``ecg_token_ids``, in order. Too long for
    ``max_length``: the ECG runs are cut (the longest first, each keeping its first tokens) down to
    ``min_ecg_tokens``, then the oldest exchanges are dropped; the last question and answer always stay
    (:class:`ConversationTooLongError` if even that does not fit). ``special_ids``: the tokenizer's
    :func:`special_token_ids`, when the caller holds them.
    """
    input_ids, labels = _encode(
        tokenizer,
        family,
        turns,
        max_length=max_length,
        ecg_token_ids=ecg_token_ids,
        min_ecg_tokens=min_ecg_tokens,
        system=system,
        generation_prompt=False,
        special_ids=special_ids,
    )
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def render_prompt(
    tokenizer: Any,
    family: str,
    turns: Sequence[Mapping[str, str]],
    *,
    max_length: int | None = None,
    ecg_token_ids: Sequence[Sequence[int]] | None = None,
    min_ecg_tokens: int = 0,
    system: str | None = None,
    special_ids: frozenset[int] | None = None,
) -> list[int]:
    """Token ids to generate the next answer from: ``turns`` end with a user turn; the template's
    generation prompt is appended. Placeholders and truncation work as in :func:`tokenize_conversation`.
    """
    input_ids, _ = _encode(
        tokenizer,
        family,
        turns,
        max_length=max_length,
        ecg_token_ids=ecg_token_ids,
        min_ecg_tokens=min_ecg_tokens,
        system=system,
        generation_prompt=True,
        special_ids=special_ids,
    )
    return input_ids


def end_of_turn_ids(tokenizer: Any, family: str) -> list[int]:
    """The special tokens that close an assistant turn in this template (generation stops at them)."""
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    layout = _layout(tokenizer, family, turns, None, False)
    special = special_token_ids(tokenizer)
    pieces = [p for p in _pieces(tokenizer, layout) if p.in_span]
    return sorted({t for p in pieces for t in p.ids if t in special})


def pad_batch(
    features: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int, *, side: str = "right"
) -> dict[str, list[list[int]]]:
    """Pad tokenized conversations to one length: pad id in inputs, 0 in the mask, -100 in labels."""
    if side not in ("right", "left"):
        raise UserError(f"padding side must be 'right' or 'left', not {side!r}")
    width = max((len(f["input_ids"]) for f in features), default=0)
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out: dict[str, list[list[int]]] = {key: [] for key in fill if all(key in f for f in features)}
    for feature in features:
        for key, rows in out.items():
            values = list(feature[key])
            pad = [fill[key]] * (width - len(values))
            rows.append(values + pad if side == "right" else pad + values)
    return out
