"""Self-describing ELM checkpoints: save, load with one call, merge-and-export, push to the hub.

A checkpoint is a folder::

    elm_config.json           architecture, representation, LLM, tokenizer, stage, file checksums
    elm_weights.safetensors   only what was trained or cannot be rebuilt: LoRA adapters (or the whole
                              LLM when it was fully trained), new ECG token rows, projector, encoder
    ecg_tokenizer.json        the ECG-Byte tokenizer (token ELM)
    tokenizer.json, ...       the LLM tokenizer, ECG tokens included

The base LLM is rebuilt from ``config.llm`` (registry name, hub id, directory or GGUF file); a
merged export (``export_merged``) also holds a plain transformers model and names itself (``"."``)
as its base, so it loads both with ``AutoModelForCausalLM`` and with :func:`load_elm`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ecgbench import __version__
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import atomic_write, read_folder_document, sha256_path
from ecgbench.models.config import ELMConfig
from ecgbench.models.elm import ELM, build_config_encoder, build_elm
from ecgbench.models.processor import ELMProcessor

CONFIG_FILE = "elm_config.json"
WEIGHTS_FILE = "elm_weights.safetensors"
ECG_TOKENIZER_FILE = "ecg_tokenizer.json"
FORMAT = "ecgbench-elm"
FORMAT_VERSION = 1
#: config.llm of an exported checkpoint: the base model is the folder itself
SELF = "."


#: config fields a later training stage may change when loading (``load_elm(update=...)``)
STAGE_FIELDS = frozenset(
    {
        "llm_training",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "gradient_checkpointing",
        "train_new_embeddings",
        "train_encoder",
        "training_stage",
        "llm_dtype",
        "attn_implementation",
    }
)


def _saves_encoder(config: ELMConfig) -> bool:
    # A frozen encoder loaded from a checkpoint folder is referenced by path and hash; anything else
    # (trained, or randomly initialised) only exists in memory and must be saved.
    return config.encoder is not None and (config.train_encoder or not config.encoder_checkpoint)


def saved_parts(config: ELMConfig) -> set[str]:
    """The parts a checkpoint of this config stores."""
    parts = {"ecg_embeddings"} if config.architecture == "token" else {"projector"}
    if config.llm_training == "lora":
        parts.add("lora")
    elif config.llm_training == "full":
        parts.add("llm")
    if _saves_encoder(config):
        parts.add("encoder")
    return parts


def trained_state(elm: ELM) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors a checkpoint stores (prefixed by part) and aliases of tied tensors left out."""
    parts: dict[str, Mapping[str, torch.Tensor]] = {}
    for part in sorted(saved_parts(elm.config)):
        if part == "lora":
            from peft import get_peft_model_state_dict

            parts[part] = get_peft_model_state_dict(elm.llm, save_embedding_layers=False)
        else:
            parts[part] = getattr(elm, part).state_dict()
    state: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for part, tensors in parts.items():
        for key, tensor in tensors.items():
            name = f"{part}.{key}"
            identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if identity in seen:  # tied weights (e.g. lm_head = embed_tokens): safetensors stores one
                aliases[name] = seen[identity]
                continue
            seen[identity] = name
            state[name] = tensor.detach().to("cpu").contiguous()
    return state, aliases


def save_elm(elm: ELM, directory: str | Path) -> Path:
    """Write ``elm`` as a self-describing checkpoint folder; ``elm_config.json`` is written last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state, aliases = trained_state(elm)
    atomic_write(
        directory / WEIGHTS_FILE,
        lambda p: save_file(state, str(p), metadata={"format": "pt", "producer": f"ecgbench {__version__}"}),
    )
    files = {WEIGHTS_FILE: sha256_path(directory / WEIGHTS_FILE)}
    if elm.ecg_tokenizer is not None:
        atomic_write(directory / ECG_TOKENIZER_FILE, lambda p: elm.ecg_tokenizer.save(p))  # type: ignore[union-attr]
        files[ECG_TOKENIZER_FILE] = sha256_path(directory / ECG_TOKENIZER_FILE)
    elm.tokenizer.save_pretrained(str(directory))
    config = elm.config
    encoder_sha = None
    if config.encoder_checkpoint and not _saves_encoder(config):
        source = Path(config.encoder_checkpoint)
        if not source.exists():
            raise UserError(
                f"encoder checkpoint {source} is gone; cannot reference it from the ELM checkpoint"
            )
        encoder_sha = sha256_path(source)
        # referenced by absolute path, so the checkpoint loads from any working directory
        config = config.model_copy(update={"encoder_checkpoint": str(source.resolve())})
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ecgbench_version": __version__,
        "config": config.model_dump(mode="json"),
        "llm_family": elm.family,
        "embedding_dim": elm.embedding_dim,
        "first_new_token_id": elm.first_new_id,
        "num_new_tokens": elm.num_new_tokens,
        "soft_tokens_per_ecg": elm.soft_tokens_per_ecg,
        "trained_parts": sorted({name.split(".", 1)[0] for name in state}),
        "tied_aliases": aliases,
        "encoder_checkpoint_sha256": encoder_sha,
        "files": files,
    }
    atomic_write(
        directory / CONFIG_FILE,
        lambda p: p.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8"),
    )
    return directory


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``elm_config.json`` of a checkpoint, with its files verified against their checksums."""
    directory = Path(directory)
    document = read_folder_document(
        directory,
        CONFIG_FILE,
        kind="ELM checkpoint",
        fmt=FORMAT,
        version=FORMAT_VERSION,
        version_key="format_version",
    )
    for name, expected in document.get("files", {}).items():
        file = directory / name
        if not file.is_file():
            raise CorruptFileError(f"checkpoint file missing: {file}")
        if sha256_path(file) != expected:
            raise CorruptFileError(
                f"checkpoint file {file} does not match its checksum (truncated or changed)"
            )
    return document


def _read_parts(directory: Path, document: Mapping[str, Any]) -> tuple[ELMConfig, dict[str, dict[str, torch.Tensor]]]:
    """The config and the stored tensors of a checkpoint, grouped by part (tied aliases restored)."""
    try:
        config = ELMConfig.model_validate(document["config"])
    except (ValidationError, KeyError) as exc:
        raise CorruptFileError(f"{directory / CONFIG_FILE} has an invalid ELM config: {exc}") from None
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise CorruptFileError(f"cannot read {directory / WEIGHTS_FILE}: {exc}") from None
    for alias, target in document.get("tied_aliases", {}).items():
        state[alias] = state[target]
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        part, key = name.split(".", 1)
        parts.setdefault(part, {})[key] = tensor
    expected = saved_parts(config)
    if set(parts) != expected:
        raise CorruptFileError(
            f"{directory / WEIGHTS_FILE} holds parts {sorted(parts)}, its config says {sorted(expected)}"
        )
    return config, parts


def load_trained_parts(elm: ELM, directory: str | Path) -> None:
    """Put a checkpoint's trained tensors into an ELM built from the same config (resuming a run)."""
    directory = Path(directory)
    config, parts = _read_parts(directory, read_checkpoint_config(directory))
    if config.architecture != elm.config.architecture or saved_parts(config) != saved_parts(elm.config):
        raise CorruptFileError(f"{directory} holds another kind of ELM than the one being trained")
    _load_parts(elm, parts, directory / WEIGHTS_FILE)


def load_processor(directory: str | Path) -> ELMProcessor:
    """The processor of a saved ELM, read from its folder without loading any weights (for DataLoader
    workers, the demo's input checks, or preparing prompts on a machine without the model)."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    document = read_checkpoint_config(directory)
    try:
        config = ELMConfig.model_validate(document["config"])
    except (ValidationError, KeyError) as exc:
        raise CorruptFileError(f"{directory / CONFIG_FILE} has an invalid ELM config: {exc}") from None
    ecg_tokenizer = None
    if config.architecture == "token":
        from ecgbench.tokenizer import ECGByteTokenizer

        ecg_tokenizer = ECGByteTokenizer.load(directory / ECG_TOKENIZER_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    processor = ELMProcessor(
        config,
        tokenizer,
        document["llm_family"],
        ecg_tokenizer=ecg_tokenizer,
        soft_tokens_per_ecg=int(document.get("soft_tokens_per_ecg") or 0),
    )
    if processor.first_new_id != document.get("first_new_token_id"):
        raise CorruptFileError(f"{directory}: its tokenizer does not hold the ECG tokens it was saved with")
    return processor


def load_elm(
    directory: str | Path,
    *,
    trainable: bool = False,
    device: str | torch.device | None = None,
    update: Mapping[str, Any] | None = None,
) -> ELM:
    """Rebuild a saved ELM with one call.

    ``trainable=False`` (inference) freezes everything and sets eval mode; ``trainable=True``
    restores the trainable parts the config names, to continue training. ``update`` starts a new
    training stage from the checkpoint by changing fields of :data:`STAGE_FIELDS`, e.g. LLaVA's
    stage 2 after a projector-only stage 1: ``{"llm_training": "lora", "training_stage": "finetune"}``.
    """
    directory = Path(directory)
    document = read_checkpoint_config(directory)
    config, parts = _read_parts(directory, document)
    if update:
        config = _next_stage(config, update, encoder_saved="encoder" in parts)

    ecg_tokenizer = None
    if config.architecture == "token":
        from ecgbench.tokenizer import ECGByteTokenizer

        ecg_tokenizer = ECGByteTokenizer.load(directory / ECG_TOKENIZER_FILE)
    encoder = None
    if config.architecture == "encoder":
        encoder = _rebuild_encoder(config, document, saved="encoder" in parts)
    llm_source = str(directory.resolve()) if config.llm == SELF else None
    elm = build_elm(config, ecg_tokenizer=ecg_tokenizer, encoder=encoder, llm_source=llm_source)
    if elm.first_new_id != document.get("first_new_token_id"):
        raise CorruptFileError(
            f"the LLM tokenizer gives ECG tokens id {elm.first_new_id}, the checkpoint expects "
            f"{document.get('first_new_token_id')}: the base LLM {config.llm!r} is not the one trained"
        )
    _load_parts(elm, parts, directory / WEIGHTS_FILE)
    if not trainable:
        elm.requires_grad_(False)
        elm.eval()
    if device is not None:
        elm.to(device)
    return elm


def _rebuild_encoder(config: ELMConfig, document: Mapping[str, Any], *, saved: bool) -> Any:
    if saved or not config.encoder_checkpoint:
        with torch.random.fork_rng(devices=[]):
            return build_config_encoder(config, None)  # weights come from the checkpoint
    source = Path(config.encoder_checkpoint)
    if not source.exists():
        raise UserError(f"the ELM's frozen encoder checkpoint is missing: {source}")
    if sha256_path(source) != document.get("encoder_checkpoint_sha256"):
        raise CorruptFileError(f"encoder checkpoint {source} changed since the ELM was saved")
    return build_config_encoder(config, str(source))


def _next_stage(config: ELMConfig, update: Mapping[str, Any], *, encoder_saved: bool) -> ELMConfig:
    """The config of a new training stage; only changes that keep every saved weight valid."""
    fixed = sorted(set(update) - STAGE_FIELDS)
    if fixed:
        raise UserError(
            f"a saved ELM's {', '.join(fixed)} cannot change "
            f"(a new stage may change: {', '.join(sorted(STAGE_FIELDS))})"
        )
    if config.llm_training != "frozen" and (
        update.get("llm_training", config.llm_training) != config.llm_training
        or any(key.startswith("lora_") and update[key] != getattr(config, key) for key in update)
    ):
        raise UserError(
            f"the LLM of this checkpoint was trained ({config.llm_training}); to adapt it differently, "
            "export it with export_merged and build the next stage on the exported folder"
        )
    try:
        new = ELMConfig.model_validate({**config.model_dump(), **update})
    except ValidationError as exc:
        raise UserError(f"invalid update for the next stage: {exc.errors()[0]['msg']}") from None
    if encoder_saved and new.encoder_checkpoint:
        new.encoder_checkpoint = None  # the encoder now lives in this checkpoint (it was trained here)
    return new


def _load_parts(elm: ELM, parts: Mapping[str, dict[str, torch.Tensor]], where: Path) -> None:
    try:
        if "lora" in parts:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(elm.llm, parts["lora"])
            if result.unexpected_keys:
                raise CorruptFileError(
                    f"{where}: LoRA tensors that fit no adapter: {result.unexpected_keys[:3]}"
                )
        if "llm" in parts:
            elm.llm.load_state_dict(parts["llm"], strict=True)
        if "ecg_embeddings" in parts:
            elm.ecg_embeddings.load_state_dict(parts["ecg_embeddings"], strict=True)  # type: ignore[union-attr]
        if "projector" in parts:
            elm.projector.load_state_dict(parts["projector"], strict=True)  # type: ignore[union-attr]
        if "encoder" in parts:
            elm.encoder.load_state_dict(parts["encoder"], strict=True)  # type: ignore[union-attr]
    except RuntimeError as exc:  # shape or key mismatch from load_state_dict
        raise CorruptFileError(f"{where} does not fit the model its config describes: {exc}") from None


@torch.no_grad()
def export_merged(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Merge LoRA into the LLM and write a plain transformers model (plus the ELM front end).

    The exported LLM holds the ECG tokens in its vocabulary, with the trained rows written into its
    input embeddings (token ELM), and its generation config suppresses them as outputs, as the ELM
    does. The folder is also an ELM checkpoint whose base LLM is itself.
    """
    elm = load_elm(checkpoint)
    model = elm.llm
    if elm.config.llm_training == "lora":
        model = model.merge_and_unload()
    rows_needed = elm.first_new_id + elm.num_new_tokens
    if model.get_input_embeddings().weight.shape[0] < rows_needed:
        model.resize_token_embeddings(rows_needed, mean_resizing=False)
    new = slice(elm.first_new_id, rows_needed)
    input_rows = model.get_input_embeddings().weight
    if elm.ecg_embeddings is not None:
        input_rows[new] = elm.ecg_embeddings.weight.to(input_rows.dtype)
    else:  # the <ecg> placeholder row is always replaced by soft tokens; any value will do
        input_rows[new] = input_rows[: elm.first_new_id].mean(0)
    output_rows = model.get_output_embeddings().weight
    if output_rows.data_ptr() != input_rows.data_ptr():
        output_rows[new] = 0.0
    model.generation_config.suppress_tokens = list(range(new.start, new.stop))
    model.generation_config.eos_token_id = elm.stop_token_ids()
    model.generation_config.pad_token_id = elm.pad_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    elm.llm = model
    elm.config = elm.config.model_copy(update={"llm": SELF, "llm_training": "frozen"})
    save_elm(elm, out_dir)
    return out_dir


def push_to_hub(
    checkpoint: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = True,
    commit_message: str = "Upload ELM checkpoint",
) -> str:
    """Upload a checkpoint folder (checked first) to a Hugging Face model repository; returns its URL."""
    read_checkpoint_config(checkpoint)
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise UserError("pushing to the hub needs huggingface_hub: pip install 'ecgbench-elm[hub]'") from None
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(checkpoint),
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message,
            ignore_patterns=[".*.tmp-*"],  # leftovers of an interrupted atomic_write
        )
    except Exception as exc:  # network, authentication or permission: all fixable by the user
        raise UserError(f"push to {repo_id} failed: {exc}") from None
    return str(url)
