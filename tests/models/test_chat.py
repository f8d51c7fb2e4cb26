"""Chat formatting: label masks token by token for all five families, truncation, prompts, bad input.

The expected token streams below spell out each family's chat format literally (Llama 3 headers,
ChatML, Gemma 2 turns, and ecgbench's GPT-2 / OPT formats), so they check the template-derived spans
against formats written down independently of the code.
"""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecgbench.models.chat import (
    IGNORE_INDEX,
    ConversationError,
    ConversationTooLongError,
    end_of_turn_ids,
    pad_batch,
    render_prompt,
    tokenize_conversation,
)
from ecgbench.models.llm import load_llm
from ecgbench.resources import SAMPLE_DIR

FAMILIES = ("llama", "qwen2", "gemma2", "gpt2", "opt")
SYSTEM = "You read ECGs."
TURNS = [
    {"role": "user", "content": "<ecg>\nWhat is the rhythm?"},
    {"role": "assistant", "content": "Sinus rhythm."},
    {"role": "user", "content": "Any ST elevation?"},
    {"role": "assistant", "content": "No ST elevation."},
]
ECG = object()  # marks where the ECG run goes in an expected layout
ECG_OFFSET = 300_000


def expected_layout(family: str) -> list[tuple[object, bool]]:
    """(text or ECG, labelled) pieces of TURNS with SYSTEM, in each family's chat format."""
    if family == "llama":
        head = "<|start_header_id|>{}<|end_header_id|>\n\n".format
        return [
            ("<|begin_of_text|>" + head("system") + SYSTEM + "<|eot_id|>" + head("user"), False),
            (ECG, False),
            ("\nWhat is the rhythm?<|eot_id|>" + head("assistant"), False),
            ("Sinus rhythm.<|eot_id|>", True),
            (head("user") + "Any ST elevation?<|eot_id|>" + head("assistant"), False),
            ("No ST elevation.<|eot_id|>", True),
        ]
    if family == "qwen2":
        return [
            (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n", False),
            (ECG, False),
            ("\nWhat is the rhythm?<|im_end|>\n<|im_start|>assistant\n", False),
            ("Sinus rhythm.<|im_end|>", True),
            ("\n<|im_start|>user\nAny ST elevation?<|im_end|>\n<|im_start|>assistant\n", False),
            ("No ST elevation.<|im_end|>", True),
            ("\n", False),
        ]
    if family == "gemma2":  # no system role: the system prompt opens the first user turn
        return [
            (f"<bos><start_of_turn>user\n{SYSTEM}\n\n", False),
            (ECG, False),
            ("\nWhat is the rhythm?<end_of_turn>\n<start_of_turn>model\n", False),
            ("Sinus rhythm.<end_of_turn>", True),
            ("\n<start_of_turn>user\nAny ST elevation?<end_of_turn>\n<start_of_turn>model\n", False),
            ("No ST elevation.<end_of_turn>", True),
            ("\n", False),
        ]
    eos, bos = ("<|endoftext|>", "") if family == "gpt2" else ("</s>", "</s>")
    return [
        (f"{bos}{SYSTEM}\n\nUser: ", False),
        (ECG, False),
        ("\nWhat is the rhythm?\nAssistant:", False),
        (f" Sinus rhythm.{eos}", True),
        ("\nUser: Any ST elevation?\nAssistant:", False),
        (f" No ST elevation.{eos}", True),
        ("\n", False),
    ]


@pytest.fixture(scope="module", params=FAMILIES)
def family_llm(request: pytest.FixtureRequest):
    return load_llm(f"tiny-{request.param}")


@pytest.fixture(scope="module")
def real_ecg_ids() -> list[int]:
    """ECG-Byte-like ids from a real record: lead II of PTB-XL ecg_id 1, quantised to 26 levels.

    Offset past every tiny vocabulary (the largest, Gemma's, has 262k), as the token ELM appends its
    ECG symbols after the LLM's vocabulary, so they never collide with text tokens.
    """
    record = wfdb.rdrecord(str(SAMPLE_DIR / "ptbxl" / "records100" / "00000" / "00001_lr"))
    lead = record.p_signal[:, 1]
    levels = np.clip(((lead - lead.min()) / (np.ptp(lead) + 1e-9) * 26).astype(int), 0, 25)
    return [ECG_OFFSET + int(v) for v in levels[:120]]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_label_mask_token_by_token(family_llm, real_ecg_ids) -> None:
    tok = family_llm.tokenizer
    out = tokenize_conversation(
        tok, family_llm.family, TURNS, max_length=4096, ecg_token_ids=[real_ecg_ids], system=SYSTEM
    )
    want_ids: list[int] = []
    want_labels: list[int] = []
    for piece, labelled in expected_layout(family_llm.family):
        ids = real_ecg_ids if piece is ECG else _ids(tok, piece)
        want_ids += ids
        want_labels += ids if labelled else [IGNORE_INDEX] * len(ids)
    assert out["input_ids"] == want_ids
    assert out["labels"] == want_labels
    assert out["attention_mask"] == [1] * len(want_ids)
    # The labelled tokens read back as the two answers, each closed by the end-of-turn token.
    labelled = [t for t, lab in zip(out["input_ids"], out["labels"], strict=True) if lab != IGNORE_INDEX]
    stop = set(end_of_turn_ids(tok, family_llm.family))
    assert labelled.count(next(iter(stop))) == 2 and len(stop) == 1
    text = tok.decode(labelled, skip_special_tokens=True)
    assert text.replace(" ", "") == "Sinusrhythm.NoSTelevation."


def test_prompt_is_the_training_prefix(family_llm, real_ecg_ids) -> None:
    """What the model is trained to continue is exactly what it is given at generation time."""
    tok, family = family_llm.tokenizer, family_llm.family
    full = tokenize_conversation(
        tok, family, TURNS, max_length=4096, ecg_token_ids=[real_ecg_ids], system=SYSTEM
    )
    labels = full["labels"]
    for k in (1, 3):  # before each answer
        prompt = render_prompt(tok, family, TURNS[:k], ecg_token_ids=[real_ecg_ids], system=SYSTEM)
        assert full["input_ids"][: len(prompt)] == prompt
        assert labels[len(prompt) - 1] == IGNORE_INDEX and labels[len(prompt)] != IGNORE_INDEX


def test_end_of_turn_tokens_stop_generation(family_llm) -> None:
    tok = family_llm.tokenizer
    expected = {
        "llama": "<|eot_id|>",
        "qwen2": "<|im_end|>",
        "gemma2": "<end_of_turn>",
        "gpt2": "<|endoftext|>",
        "opt": "</s>",
    }[family_llm.family]
    assert tok.convert_ids_to_tokens(end_of_turn_ids(tok, family_llm.family)) == [expected]
    assert tok.convert_tokens_to_ids(expected) in family_llm.model.generation_config.eos_token_id


@pytest.fixture(scope="module")
def llama():
    return load_llm("tiny-llama")


def test_added_special_token_is_one_token(llama) -> None:
    tok = llama.tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<ecg>", "<ecg_start>", "<ecg_end>"]})
    ecg_id = tok.convert_tokens_to_ids("<ecg>")
    start, end = tok.convert_tokens_to_ids(["<ecg_start>", "<ecg_end>"])
    turns = [
        {"role": "user", "content": "<ecg_start><ecg><ecg_end> Rhythm?"},
        {"role": "assistant", "content": "AF."},
    ]
    out = tokenize_conversation(tok, "llama", turns, max_length=256, ecg_token_ids=[[ecg_id] * 8])
    ids = out["input_ids"]
    i = ids.index(start)
    assert ids[i : i + 10] == [start, *[ecg_id] * 8, end]
    assert all(lab == IGNORE_INDEX for lab in out["labels"][: i + 10])


def test_truncation_shrinks_ecg_runs_before_dropping_turns(llama, real_ecg_ids) -> None:
    tok = llama.tokenizer
    full = tokenize_conversation(tok, "llama", TURNS, max_length=4096, ecg_token_ids=[real_ecg_ids])
    limit = len(full["input_ids"]) - 50
    out = tokenize_conversation(
        tok, "llama", TURNS, max_length=limit, ecg_token_ids=[real_ecg_ids], min_ecg_tokens=10
    )
    assert len(out["input_ids"]) == limit
    # Every turn is still there; only the ECG run lost its last 50 tokens.
    answers = [t for t, lab in zip(out["input_ids"], out["labels"], strict=True) if lab != IGNORE_INDEX]
    assert answers == [
        t for t, lab in zip(full["input_ids"], full["labels"], strict=True) if lab != IGNORE_INDEX
    ]
    start = full["input_ids"].index(real_ecg_ids[0])
    assert out["input_ids"][start : start + 70] == real_ecg_ids[:70]
    assert out["input_ids"][start + 70 :] == full["input_ids"][start + 120 :]


def test_truncation_cuts_the_longest_run_first(llama) -> None:
    tok = llama.tokenizer
    turns = [
        {"role": "user", "content": "<ecg> vs <ecg>: changed?"},
        {"role": "assistant", "content": "Yes."},
    ]
    short, long = list(range(ECG_OFFSET, ECG_OFFSET + 20)), list(range(ECG_OFFSET + 100, ECG_OFFSET + 200))
    full = tokenize_conversation(tok, "llama", turns, max_length=4096, ecg_token_ids=[short, long])
    out = tokenize_conversation(
        tok, "llama", turns, max_length=len(full["input_ids"]) - 60, ecg_token_ids=[short, long]
    )
    assert [t for t in out["input_ids"] if t in short] == short
    assert [t for t in out["input_ids"] if t in long] == long[:40]


def test_truncation_drops_oldest_exchange_then_regrows_ecg(llama, real_ecg_ids) -> None:
    tok = llama.tokenizer
    turns = [
        {"role": "user", "content": "Hello, this is an older question about the patient history."},
        {"role": "assistant", "content": "An older answer that can be dropped to make room."},
        {"role": "user", "content": "<ecg>\nWhat is the rhythm?"},
        {"role": "assistant", "content": "Sinus rhythm."},
    ]
    full = tokenize_conversation(tok, "llama", turns, max_length=4096, ecg_token_ids=[real_ecg_ids])
    last_only = tokenize_conversation(tok, "llama", turns[2:], max_length=4096, ecg_token_ids=[real_ecg_ids])
    # Too short for the old exchange even with the ECG run at its minimum of 100 tokens.
    limit = len(full["input_ids"]) - 25
    assert len(last_only["input_ids"]) <= limit < len(full["input_ids"]) - 20
    out = tokenize_conversation(
        tok, "llama", turns, max_length=limit, ecg_token_ids=[real_ecg_ids], min_ecg_tokens=100
    )
    assert out == last_only  # the old exchange went; with the room it freed the whole ECG run fits again
    with pytest.raises(ConversationTooLongError):
        tokenize_conversation(
            tok,
            "llama",
            turns,
            max_length=len(last_only["input_ids"]) - 21,
            ecg_token_ids=[real_ecg_ids],
            min_ecg_tokens=100,
        )


def test_prompt_truncation_keeps_the_question(llama, real_ecg_ids) -> None:
    tok = llama.tokenizer
    turns = [*TURNS, {"role": "user", "content": "Compared with before?"}]
    full = render_prompt(tok, "llama", turns, ecg_token_ids=[real_ecg_ids])
    short = render_prompt(tok, "llama", turns, ecg_token_ids=[real_ecg_ids], max_length=len(full) - 30)
    assert len(short) == len(full) - 30 and short[-15:] == full[-15:]
    question = _ids(tok, "Compared with before?")
    assert any(short[i : i + len(question)] == question for i in range(len(short)))


@pytest.mark.parametrize(
    ("turns", "ecg", "message"),
    [
        ([{"role": "assistant", "content": "Hi"}], None, "alternate"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], None, "alternate"),
        (
            [{"role": "user", "content": "<ecg> a"}, {"role": "assistant", "content": "b"}],
            None,
            "placeholder",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b <ecg>"}],
            [[1]],
            "placeholder",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<ecg>"}],
            None,
            "only in user turns",
        ),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}], None, "string 'content'"),
        ([{"role": "user", "content": "a"}], None, "end with an answer"),
        ([], None, "at least one user turn"),
    ],
)
def test_malformed_conversations_are_one_line_errors(llama, turns, ecg, message) -> None:
    with pytest.raises(ConversationError, match=message):
        tokenize_conversation(llama.tokenizer, "llama", turns, max_length=128, ecg_token_ids=ecg)


def test_system_prompt_given_twice_and_prompt_ending_with_answer(llama) -> None:
    turns = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]
    assert render_prompt(llama.tokenizer, "llama", turns) == render_prompt(
        llama.tokenizer, "llama", turns[1:], system="s"
    )
    with pytest.raises(ConversationError, match="twice"):
        render_prompt(llama.tokenizer, "llama", turns, system="s")
    with pytest.raises(ConversationError, match="must end with a user turn"):
        render_prompt(llama.tokenizer, "llama", TURNS)


def test_pad_batch_never_puts_loss_on_padding(llama) -> None:
    tok = llama.tokenizer
    a = tokenize_conversation(tok, "llama", TURNS[:2], max_length=256, ecg_token_ids=[[7, 8]])
    b = tokenize_conversation(tok, "llama", TURNS, max_length=256, ecg_token_ids=[[7, 8]])
    for side in ("right", "left"):
        batch = pad_batch([a, b], tok.pad_token_id, side=side)
        width = len(b["input_ids"])
        pad = width - len(a["input_ids"])
        row = batch["labels"][0]
        pads = row[len(a["labels"]) :] if side == "right" else row[:pad]
        assert pads == [IGNORE_INDEX] * pad
        assert sum(batch["attention_mask"][0]) == len(a["input_ids"]) and batch["labels"][1] == b["labels"]
        assert all(len(r) == width for r in batch["input_ids"])
