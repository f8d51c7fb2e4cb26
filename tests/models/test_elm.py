"""The three ELM architectures on tiny presets of every LLM family, fed real PTB-XL ECGs and ECG-QA text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from elm_helpers import (
    ELM_VARIANTS,
    SIGNAL_LENGTH,
    TINY_LLMS,
    conversations,
    ecg_byte_tokenizer,
    make_elm,
    real_ecgs,
    sharpen,
    train_steps,
)
from pydantic import ValidationError

from ecgbench.errors import UserError
from ecgbench.models.chat import IGNORE_INDEX
from ecgbench.models.elm import ELMConfig, build_elm
from ecgbench.models.processor import ECG_END, ECG_START, ecg_byte_token
from ecgbench.models.projector import PatchProjector, Projector, pool_tokens

# The token ELM's ECG-Byte runs are long; truncation shrinks them to fit (interface C).
MAX_LENGTH = 256


def _batch(elm, convs=None, padding_side="right"):
    convs = conversations()[:2] if convs is None else convs
    return elm.processor.collate([elm.processor.prepare_example(t, e, max_length=MAX_LENGTH) for t, e in convs], padding_side)


def _prompts(elm, convs=None):
    convs = conversations()[:2] if convs is None else convs
    return [
        elm.processor.prepare_prompt([t[0]], e[: t[0]["content"].count("<ecg>")], max_length=MAX_LENGTH)
        for t, e in convs
    ]


# ----------------------------------------------------------------------------- every ELM x family


# Every architecture x representation x LLM family.
MATRIX = [(variant, family) for family in sorted(TINY_LLMS) for variant in sorted(ELM_VARIANTS)]


@pytest.mark.parametrize(("variant", "family"), MATRIX)
def test_forward_backward_generate(variant: str, family: str) -> None:
    elm = make_elm(variant, family)
    batch = _batch(elm, conversations()[1:2])  # two ECGs in one question
    out = elm(batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.loss)
    out.loss.backward()
    trained = {name.split(".")[0] for name, p in elm.named_parameters() if p.requires_grad}
    with_grad = {
        name.split(".")[0]
        for name, p in elm.named_parameters()
        if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0
    }
    assert trained == with_grad  # every trainable part (LoRA, new rows, projector) receives gradient
    expected = {"llm"} | ({"ecg_embeddings"} if variant == "token" else {"projector"})
    assert expected <= trained
    assert "encoder" not in trained  # frozen by default

    prompts = elm.processor.collate(_prompts(elm), "left")
    ids = elm.generate_ids(prompts, max_new_tokens=2, min_new_tokens=2)
    # generate(inputs_embeds=...) returns only new tokens; nothing may be cut away as "the prompt"
    assert [len(row) for row in ids] == [2, 2]
    texts = elm.generate(prompts, max_new_tokens=2, min_new_tokens=2)
    assert texts == [elm.decode(row) for row in ids]


@pytest.mark.parametrize(
    ("variant", "family"),
    [(variant, "gpt2") for variant in sorted(ELM_VARIANTS)]
    + [("free-signal", "llama"), ("free-signal", "gemma2")],
)
def test_left_padded_batch_generates_as_single_prompts(variant: str, family: str) -> None:
    elm = make_elm(variant, family)
    sharpen(elm)
    prompts = _prompts(elm, conversations())
    batched = elm.generate_ids(elm.processor.collate(prompts, "left"), max_new_tokens=5, min_new_tokens=5)
    single = [
        elm.generate_ids(elm.processor.collate([p], "left"), max_new_tokens=5, min_new_tokens=5)[0] for p in prompts
    ]
    assert batched == single
    assert len({tuple(row) for row in batched}) > 1  # the prompts really lead to different answers


def test_generation_refuses_right_padding() -> None:
    elm = make_elm("free-signal")
    batch = elm.processor.collate(_prompts(elm), "right")
    with pytest.raises(ValueError, match="left-padded"):
        elm.generate(batch, max_new_tokens=2)


# ----------------------------------------------------------------------------- label masks per family

# The end-of-turn marker each family's real chat template closes an assistant turn with.
END_OF_TURN = {
    "llama": "<|eot_id|>",
    "qwen2": "<|im_end|>",
    "gemma2": "<end_of_turn>",
}


@pytest.mark.parametrize("family", sorted(TINY_LLMS))
def test_labels_cover_exactly_the_assistant_answers(family: str) -> None:
    elm = make_elm("free-signal", family)
    turns, ecgs = conversations()[2]
    example = elm.processor.prepare_example(turns, ecgs, max_length=1024)
    ids, labels = example["input_ids"], example["labels"]
    assert len(ids) == len(labels) == len(example["attention_mask"])
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(label)
        previous = label
    assert all(token != elm.placeholder_id for span in spans for token in span)
    answers = [turn["content"] for turn in turns if turn["role"] == "assistant"]
    assert len(spans) == len(answers)
    for span, answer in zip(spans, answers, strict=True):
        text = elm.tokenizer.decode(span, skip_special_tokens=False)
        assert text.strip().startswith(answer)
        end = text.strip()[len(answer) :]
        if family in END_OF_TURN:
            assert end.strip() == END_OF_TURN[family]
        else:  # plain templates end a turn with the end-of-sequence token
            assert end.strip() == elm.tokenizer.eos_token


# ----------------------------------------------------------------------------- placing ECGs


def test_soft_tokens_land_in_their_own_conversation_and_order() -> None:
    elm = make_elm("free-signal")
    sharpen(elm)
    convs = conversations()
    batch = _batch(elm, convs)
    assert batch["ecg_owner"].tolist() == [0, 1, 1, 2, 2]
    embeds = elm.embed(batch)
    n = elm.soft_tokens_per_ecg
    for row, (_, ecgs) in enumerate(convs):
        slots = (batch["input_ids"][row] == elm.placeholder_id).nonzero().flatten()
        assert len(slots) == n * len(ecgs)
        expected = elm.soft_tokens(elm.processor.representation_of(ecgs)).reshape(-1, elm.embedding_dim)
        torch.testing.assert_close(embeds[row, slots], expected)
    # text positions keep the LLM's own embeddings
    text = batch["input_ids"] != elm.placeholder_id
    plain = elm.llm.get_input_embeddings()(batch["input_ids"].masked_fill(~text, 0))
    torch.testing.assert_close(embeds[text], plain[text])


def test_truncation_keeps_the_ecgs_of_the_kept_turns() -> None:
    elm = make_elm("encoder-signal")
    turns, ecgs = conversations()[2]
    full = elm.processor.prepare_example(turns, ecgs, max_length=1024)
    assert len(full["ecg"]) == 2
    short = elm.processor.prepare_example(turns, ecgs, max_length=len(full["input_ids"]) - 4)
    assert len(short["input_ids"]) <= len(full["input_ids"]) - 4
    assert len(short["ecg"]) == 1  # the oldest turn pair and its ECG were dropped
    torch.testing.assert_close(short["ecg"], elm.processor.representation_of([ecgs[1]]))
    elm(elm.processor.collate([short]))  # placeholders and ECGs still agree


def test_token_elm_ids_are_ecg_byte_ids_in_the_llm_vocabulary() -> None:
    elm = make_elm("token")
    tokenizer = ecg_byte_tokenizer()
    turns, ecgs = conversations()[0]
    example = elm.processor.prepare_example(turns, ecgs, max_length=100_000)
    ids = example["input_ids"]
    start, end = ids.index(elm.processor.ecg_start_id), ids.index(elm.processor.ecg_end_id)
    expected = (tokenizer.encode(ecgs[0]) + elm.first_new_id).tolist()
    assert ids[start + 1 : end] == expected
    assert example["ecg"] is None
    # the LLM tokenizer knows the new tokens (decoding, export), and they are special (skipped in answers)
    assert elm.tokenizer.convert_ids_to_tokens(ids[start + 1]) == ecg_byte_token(
        expected[0] - elm.first_new_id
    )
    assert elm.tokenizer.convert_tokens_to_ids([ECG_START, ECG_END]) == [elm.processor.ecg_start_id, elm.processor.ecg_end_id]
    assert elm.decode(ids[start : end + 1]) == ""


def test_token_elm_truncation_shrinks_the_ecg_run_not_the_question() -> None:
    elm = make_elm("token")
    turns, ecgs = conversations()[0]
    example = elm.processor.prepare_example(turns, ecgs, max_length=200)
    ids = example["input_ids"]
    assert len(ids) <= 200
    assert ids.count(elm.processor.ecg_start_id) == ids.count(elm.processor.ecg_end_id) == 1
    text = elm.tokenizer.decode(ids, skip_special_tokens=True)
    assert turns[0]["content"].split("\n")[1] in text and turns[1]["content"] in text


@pytest.mark.parametrize("trainable", [True, False])
def test_new_embedding_rows_trainable_or_frozen_by_flag(trainable: bool) -> None:
    elm = make_elm("token", train_new_embeddings=trainable)
    assert elm.ecg_embeddings.weight.requires_grad is trainable
    batch = _batch(elm)
    before = elm.ecg_embeddings.weight.detach().clone()
    train_steps(elm, batch, steps=1)
    changed = (elm.ecg_embeddings.weight.detach() != before).any(dim=1)
    used = torch.unique(batch["input_ids"][batch["input_ids"] >= elm.first_new_id]) - elm.first_new_id
    if trainable:
        assert changed[used].all()
        unused = torch.ones(len(changed), dtype=torch.bool)
        unused[used] = False
        assert not changed[unused].any()  # AdamW with no gradient leaves unused rows alone
    else:
        assert not changed.any()
    # the LLM's own vocabulary is never resized or touched
    assert elm.llm.get_input_embeddings().weight.shape[0] <= elm.first_new_id


def test_symbol_init_starts_rows_at_the_letters_they_spell() -> None:
    elm = make_elm("token", embedding_init="symbols")
    rows = elm.llm.get_input_embeddings().weight.detach()
    strings = ecg_byte_tokenizer().token_strings
    spelled = torch.stack(
        [rows[elm.tokenizer(s, add_special_tokens=False)["input_ids"]].mean(0) for s in strings[:40]]
    )
    new = elm.ecg_embeddings.weight.detach()[:40]
    nearest = torch.cdist(new, spelled).argmin(dim=1)
    assert (nearest == torch.arange(40)).float().mean() > 0.9
    mean_init = make_elm("token", embedding_init="mean").ecg_embeddings.weight.detach()
    assert (
        torch.cdist(mean_init[:40], rows.mean(0, keepdim=True)).max()
        < torch.cdist(new, rows.mean(0, keepdim=True)).max()
    )


def test_soft_token_elm_trains_its_projector_and_loss_goes_down() -> None:
    elm = make_elm("free-signal", llm_training="frozen")
    assert {n.split(".")[0] for n, p in elm.named_parameters() if p.requires_grad} == {"projector"}
    losses = train_steps(elm, _batch(elm), steps=8, lr=3e-3)
    assert losses[-1] < losses[0]


def test_trained_encoder_is_trainable_and_stays_in_train_mode() -> None:
    elm = make_elm("encoder-signal", train_encoder=True)
    assert all(p.requires_grad for p in elm.encoder.parameters())
    elm.train()
    assert elm.encoder.training
    frozen = make_elm("encoder-signal")
    frozen.train()
    assert not frozen.encoder.training and not any(p.requires_grad for p in frozen.encoder.parameters())


def test_bfloat16_llm_takes_float32_front_end_output() -> None:
    elm = make_elm("encoder-signal", llm_dtype="bfloat16")
    assert elm.llm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert next(elm.projector.parameters()).dtype == torch.float32
    out = elm(_batch(elm, conversations()[1:2]))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert elm.projector.layers[0].weight.grad is not None
    ids = elm.generate_ids(elm.processor.collate(_prompts(elm), "left"), max_new_tokens=2, min_new_tokens=2)
    assert [len(row) for row in ids] == [2, 2]


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_are_one_line_errors() -> None:
    elm = make_elm("encoder-signal")
    turns, ecgs = conversations()[1]
    with pytest.raises(UserError, match="2 <ecg> placeholders but 1 ECGs"):
        elm.processor.prepare_example(turns, ecgs[:1], max_length=512)
    broken = ecgs[0].copy()
    broken[3, 100] = np.nan
    with pytest.raises(UserError, match="NaN"):
        elm.processor.prepare_example(turns, [broken, ecgs[1]], max_length=512)
    with pytest.raises(UserError, match=f"this ELM reads {SIGNAL_LENGTH}"):
        elm.processor.prepare_example(turns, [ecgs[0][:, :400], ecgs[1]], max_length=512)
    with pytest.raises(UserError, match=r"expected \(12, samples\)"):
        elm.processor.prepare_example(turns, [ecgs[0][:11], ecgs[1]], max_length=512)
    # A malformed conversation item (as read from JSON) is a one-line error, not a KeyError.
    with pytest.raises(UserError, match="string 'content'"):
        elm.processor.prepare_example([{"role": "user"}, turns[1]], ecgs, max_length=512)
    with pytest.raises(UserError, match="has role None"):
        elm.processor.prepare_prompt([{"content": "<ecg> <ecg> Same?"}], ecgs)


def test_token_elm_checks_the_segment_length_it_was_built_for() -> None:
    elm = make_elm("token")
    turns, ecgs = conversations()[0]
    with pytest.raises(UserError, match=f"this ELM reads {SIGNAL_LENGTH}"):
        elm.processor.prepare_example(turns, [np.concatenate([ecgs[0], ecgs[0]], axis=1)], max_length=512)


def test_batch_with_missing_ecgs_is_rejected() -> None:
    elm = make_elm("free-signal")
    batch = _batch(elm)
    del batch["ecg"]
    with pytest.raises(ValueError, match="no ECG inputs"):
        elm(batch)
    batch = _batch(elm)
    batch["ecg_owner"] = torch.zeros_like(batch["ecg_owner"])
    with pytest.raises(ValueError, match="placeholders per row"):
        elm(batch)


#: what the segment store's manifest gives every ELM config
STORE_SHAPE = {"signal_length": SIGNAL_LENGTH, "fs": 100.0}


def test_config_rejects_inconsistent_architectures() -> None:
    with pytest.raises(ValidationError, match="representation must be 'tokens'"):
        ELMConfig(architecture="token", representation="signal", llm="tiny-llama", **STORE_SHAPE)
    with pytest.raises(ValidationError, match="needs an encoder name"):
        ELMConfig(architecture="encoder", representation="signal", llm="tiny-llama", **STORE_SHAPE)
    with pytest.raises(ValidationError, match="has no encoder"):
        ELMConfig(architecture="encoder-free", representation="signal", llm="tiny-llama", encoder="st-mem", **STORE_SHAPE)
    with pytest.raises(ValidationError):
        ELMConfig(architecture="encoder-free", representation="signal", llm="tiny-llama", projector="mlp3", **STORE_SHAPE)


def test_encoder_with_the_wrong_representation_is_a_user_error() -> None:
    with pytest.raises(UserError, match="reads 'signal' input"):
        make_elm("encoder-signal", representation="stacked")


def test_token_elm_needs_a_tokenizer_file(tmp_path) -> None:
    config = ELMConfig(architecture="token", representation="tokens", llm="tiny-llama", **STORE_SHAPE)
    with pytest.raises(UserError, match="needs an ECG-Byte tokenizer"):
        build_elm(config)
    with pytest.raises(UserError, match="not found"):
        build_elm(config, ecg_tokenizer=tmp_path / "missing.json")


# ----------------------------------------------------------------------------- projectors


def test_projectors_shapes_and_patch_order() -> None:
    signal = torch.as_tensor(np.stack(real_ecgs()[:2]))
    patcher = PatchProjector("signal", 50, 12, 16, "linear")
    patches = patcher.patches(signal)
    assert patches.shape == (2, SIGNAL_LENGTH // 50, 12 * 50)
    # token t holds samples [50 t, 50 t + 50) of every lead, lead after lead
    torch.testing.assert_close(patches[1, 3].reshape(12, 50), signal[1, :, 150:200])
    image = torch.rand(2, 3, 32, 48)
    tiles = PatchProjector("image", 16, 3, 16).patches(image)
    assert tiles.shape == (2, 2 * 3, 3 * 16 * 16)
    torch.testing.assert_close(tiles[0, 4].reshape(3, 16, 16), image[0, :, 16:32, 16:32])
    mlp = Projector("mlp2", 32, 8)
    assert mlp(torch.zeros(2, 5, 32)).shape == (2, 5, 8) and len(mlp.layers) == 3
    pooled = pool_tokens(torch.arange(12.0).reshape(1, 12, 1), 3)
    assert pooled.flatten().tolist() == [1.5, 5.5, 9.5]


# ----------------------------------------------------------------------------- real weights


@pytest.mark.slow
def test_smollm2_elm_learns_and_answers() -> None:
    """SmolLM2-135M-Instruct (real weights, offline GGUF) as the LLM of an encoder-free ELM."""
    from ecgbench.models.llm import OFFLINE_SMOLLM2

    # `./dev setup` fetches the weights; without them load_llm fails naming the fetch command.
    config = ELMConfig(
        architecture="encoder-free",
        representation="signal",
        llm=OFFLINE_SMOLLM2,
        patch_size=50,
        signal_length=SIGNAL_LENGTH,
        fs=100.0,
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.0,
    )
    elm = build_elm(config)
    assert elm.family == "llama"
    turns, ecgs = conversations()[0]
    batch = elm.processor.collate([elm.processor.prepare_example(turns, ecgs, max_length=256)])
    losses = train_steps(elm, batch, steps=6, lr=2e-3)
    assert losses[-1] < losses[0]
    prompt = elm.processor.collate([elm.processor.prepare_prompt(turns[:1], ecgs)], "left")
    (answer,) = elm.generate(prompt, max_new_tokens=8)
    assert answer.strip()  # real text, not an empty string
