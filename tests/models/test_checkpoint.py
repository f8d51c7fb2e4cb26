"""Self-describing ELM checkpoints: round trips, what is stored, corrupt files, export, hub upload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from elm_helpers import ELM_VARIANTS, conversations, make_elm, train_steps
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.models.checkpoint import (
    CONFIG_FILE,
    ECG_TOKENIZER_FILE,
    WEIGHTS_FILE,
    export_merged,
    load_elm,
    push_to_hub,
    save_elm,
)
from ecgbench.models.elm import ELM

MAX_LENGTH = 256


def _batches(elm: ELM) -> tuple[dict, dict]:
    convs = conversations()
    train = elm.processor.collate([elm.processor.prepare_example(t, e, max_length=MAX_LENGTH) for t, e in convs[:2]])
    prompts = elm.processor.collate(
        [
            elm.processor.prepare_prompt([t[0]], e[: t[0]["content"].count("<ecg>")], max_length=MAX_LENGTH)
            for t, e in convs
        ],
        "left",
    )
    return train, prompts


def _logits(elm: ELM, batch: dict) -> torch.Tensor:
    elm.eval()
    with torch.no_grad():
        return elm(batch).logits


def _saved_keys(directory: Path) -> list[str]:
    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as handle:
        return list(handle.keys())


@pytest.mark.parametrize("variant", sorted(ELM_VARIANTS))
def test_round_trip_gives_identical_outputs(variant: str, tmp_path: Path) -> None:
    elm = make_elm(variant)
    train, prompts = _batches(elm)
    train_steps(elm, train, steps=2)  # LoRA B, new rows and projector move away from their init
    elm.config.training_stage = "finetune"
    reference = _logits(elm, train)
    answers = elm.generate_ids(prompts, max_new_tokens=4)
    save_elm(elm, tmp_path / "ckpt")

    loaded = load_elm(tmp_path / "ckpt")
    assert loaded.config == elm.config
    assert loaded.config.training_stage == "finetune"
    assert torch.equal(_logits(loaded, train), reference)
    assert loaded.generate_ids(prompts, max_new_tokens=4) == answers
    assert not any(p.requires_grad for p in loaded.parameters())


def test_checkpoint_holds_only_what_was_trained(tmp_path: Path) -> None:
    elm = make_elm("token")
    save_elm(elm, tmp_path)
    keys = _saved_keys(tmp_path)
    parts = {key.split(".", 1)[0] for key in keys}
    assert parts == {"lora", "ecg_embeddings"}
    assert all("lora_" in key for key in keys if key.startswith("lora."))
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert document["config"]["architecture"] == "token"
    assert document["config"]["representation"] == "tokens"
    assert document["llm_family"] == "gpt2"
    assert set(document["files"]) == {WEIGHTS_FILE, ECG_TOKENIZER_FILE}
    assert (tmp_path / "tokenizer.json").is_file()  # the LLM tokenizer, ECG tokens included
    saved = sum(p.numel() for p in elm.parameters() if p.requires_grad)
    assert saved == sum(t.numel() for t in _load_tensors(tmp_path).values())

    free = make_elm("free-signal", llm_training="frozen")
    save_elm(free, tmp_path / "free")
    assert {k.split(".", 1)[0] for k in _saved_keys(tmp_path / "free")} == {"projector"}


def _load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / WEIGHTS_FILE))


def test_fully_trained_llm_round_trip_with_tied_weights(tmp_path: Path) -> None:
    elm = make_elm("free-signal", llm_training="full")
    assert (
        elm.llm.get_output_embeddings().weight.data_ptr() == elm.llm.get_input_embeddings().weight.data_ptr()
    )
    train, _ = _batches(elm)
    train_steps(elm, train, steps=1)
    reference = _logits(elm, train)
    save_elm(elm, tmp_path)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert document["tied_aliases"]  # the tied output matrix is stored once
    assert torch.equal(_logits(load_elm(tmp_path), train), reference)


def test_trainable_load_restores_the_trainable_parts(tmp_path: Path) -> None:
    elm = make_elm("encoder-signal", train_encoder=True)
    save_elm(elm, tmp_path)
    loaded = load_elm(tmp_path, trainable=True)
    before = {n for n, p in elm.named_parameters() if p.requires_grad}
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == before
    assert "encoder" in {k.split(".", 1)[0] for k in _saved_keys(tmp_path)}


def test_frozen_encoder_checkpoint_is_referenced_and_checked(tmp_path: Path) -> None:
    from ecgbench.models.encoders import build_encoder

    encoder_dir = build_encoder("st-mem", "tiny").save_pretrained(tmp_path / "encoder")
    elm = make_elm("encoder-signal", encoder_checkpoint=str(encoder_dir))
    train, _ = _batches(elm)
    save_elm(elm, tmp_path / "elm")
    assert "encoder" not in {k.split(".", 1)[0] for k in _saved_keys(tmp_path / "elm")}
    assert torch.equal(_logits(load_elm(tmp_path / "elm"), train), _logits(elm, train))

    build_encoder("st-mem", "tiny").save_pretrained(encoder_dir)  # different random weights
    with pytest.raises(CorruptFileError, match="changed since the ELM was saved"):
        load_elm(tmp_path / "elm")


def test_next_stage_adds_lora_to_a_projector_only_stage(tmp_path: Path) -> None:
    stage1 = make_elm("free-signal", llm_training="frozen", training_stage="pretrain")
    train, _ = _batches(stage1)
    train_steps(stage1, train, steps=2)
    save_elm(stage1, tmp_path / "stage1")
    stage2 = load_elm(
        tmp_path / "stage1", trainable=True, update={"llm_training": "lora", "training_stage": "finetune"}
    )
    assert stage2.config.training_stage == "finetune"
    trainable = {n.split(".")[0] for n, p in stage2.named_parameters() if p.requires_grad}
    assert trainable == {"llm", "projector"}
    for name, tensor in stage1.projector.state_dict().items():
        assert torch.equal(stage2.projector.state_dict()[name], tensor)
    # fresh LoRA starts as the identity (B = 0): the stage-2 model still computes stage 1's function
    torch.testing.assert_close(_logits(stage2, train), _logits(stage1, train))
    train_steps(stage2, train, steps=1)
    save_elm(stage2, tmp_path / "stage2")
    assert torch.equal(_logits(load_elm(tmp_path / "stage2"), train), _logits(stage2, train))

    with pytest.raises(UserError, match="export it with export_merged"):
        load_elm(tmp_path / "stage2", update={"llm_training": "full"})
    with pytest.raises(UserError, match="patch_size cannot change"):
        load_elm(tmp_path / "stage2", update={"patch_size": 25})


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ckpt")
    save_elm(make_elm("free-signal"), directory)
    return directory


def _copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_missing_or_foreign_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_elm(tmp_path / "nope")
    with pytest.raises(UserError, match="is not an ELM checkpoint"):
        load_elm(tmp_path)


def test_truncated_weights_are_detected(saved_checkpoint: Path, tmp_path: Path) -> None:
    copy = _copy(saved_checkpoint, tmp_path / "c")
    data = (copy / WEIGHTS_FILE).read_bytes()
    (copy / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="does not match its checksum"):
        load_elm(copy)
    (copy / WEIGHTS_FILE).unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        load_elm(copy)


def test_malformed_config_is_detected(saved_checkpoint: Path, tmp_path: Path) -> None:
    copy = _copy(saved_checkpoint, tmp_path / "c")
    text = (copy / CONFIG_FILE).read_text()
    (copy / CONFIG_FILE).write_text(text[:-20])
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_elm(copy)
    document = json.loads(text)
    document["config"]["architecture"] = "diffusion"
    (copy / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(CorruptFileError, match="invalid ELM config"):
        load_elm(copy)
    document = json.loads(text)
    document["format_version"] = 99
    (copy / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(UserError, match="format version 99"):
        load_elm(copy)


def test_weights_of_another_model_are_rejected(saved_checkpoint: Path, tmp_path: Path) -> None:
    copy = _copy(saved_checkpoint, tmp_path / "c")
    document = json.loads((copy / CONFIG_FILE).read_text())
    document["config"]["patch_size"] = 25  # the saved projector was built for 50-sample patches
    (copy / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(CorruptFileError, match="does not fit"):
        load_elm(copy)


# ----------------------------------------------------------------------------- export


def test_token_elm_exports_to_a_plain_transformers_model(tmp_path: Path) -> None:
    elm = make_elm("token")
    train, prompts = _batches(elm)
    train_steps(elm, train, steps=2)
    reference = _logits(elm, train)
    answers = elm.generate_ids(prompts, max_new_tokens=4)
    save_elm(elm, tmp_path / "ckpt")
    out = export_merged(tmp_path / "ckpt", tmp_path / "export")

    plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.convert_tokens_to_ids("<ecg_start>") == elm.processor.ecg_start_id
    with torch.no_grad():
        logits = plain(input_ids=train["input_ids"], attention_mask=train["attention_mask"]).logits
    vocab = reference.shape[-1]
    torch.testing.assert_close(logits[..., :vocab], reference, atol=1e-4, rtol=1e-4)
    assert set(plain.generation_config.suppress_tokens) >= {elm.processor.ecg_start_id, elm.processor.ecg_end_id}
    generated = plain.generate(
        input_ids=prompts["input_ids"],
        attention_mask=prompts["attention_mask"],
        max_new_tokens=4,
        do_sample=False,
    )[:, prompts["input_ids"].shape[1] :]
    stops = set(elm.stop_token_ids())
    cut = [row[: next((i for i, t in enumerate(row) if t in stops), len(row))] for row in generated.tolist()]
    assert cut == answers

    again = load_elm(out)  # the export is itself a checkpoint whose base LLM is the folder
    assert again.config.llm == "." and again.config.llm_training == "frozen"
    torch.testing.assert_close(_logits(again, train)[..., :vocab], reference, atol=1e-4, rtol=1e-4)
    assert again.suppressed_ids() == list(
        range(again.first_new_id, again.first_new_id + again.num_new_tokens)
    )
    assert again.generate_ids(prompts, max_new_tokens=4) == answers


def test_encoder_elm_export_keeps_its_front_end(tmp_path: Path) -> None:
    elm = make_elm("encoder-signal")
    train, _ = _batches(elm)
    train_steps(elm, train, steps=2)
    reference = _logits(elm, train)
    save_elm(elm, tmp_path / "ckpt")
    out = export_merged(tmp_path / "ckpt", tmp_path / "export")
    assert (out / "config.json").is_file() and (out / WEIGHTS_FILE).is_file()
    assert {k.split(".", 1)[0] for k in _saved_keys(out)} == {"projector", "encoder"}
    logits = _logits(load_elm(out), train)  # one more column: the <ecg> row, suppressed in generation
    torch.testing.assert_close(logits[..., : reference.shape[-1]], reference, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- hub


class _FakeHub:
    calls: ClassVar[list[tuple[str, dict]]] = []
    fail: ClassVar[bool] = False

    def __init__(self, token: str | None = None):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kwargs: object) -> str:
        if self.fail:
            raise OSError("401 Unauthorized")
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs: object) -> None:
        self.calls.append(("upload_folder", kwargs))


def test_push_to_hub_uploads_the_checked_folder(
    saved_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    _FakeHub.calls = []
    url = push_to_hub(saved_checkpoint, "someone/ecg-elm", token="t0k")
    assert url == "https://huggingface.co/someone/ecg-elm"
    names = [name for name, _ in _FakeHub.calls]
    assert names == ["init", "create_repo", "upload_folder"]
    assert _FakeHub.calls[1][1]["private"] is True
    assert _FakeHub.calls[2][1]["folder_path"] == str(saved_checkpoint)

    with pytest.raises(UserError, match="is not an ELM checkpoint"):
        push_to_hub(tmp_path, "someone/ecg-elm")
    _FakeHub.fail = True
    try:
        with pytest.raises(UserError, match="push to someone/ecg-elm failed: 401"):
            push_to_hub(saved_checkpoint, "someone/ecg-elm")
    finally:
        _FakeHub.fail = False
