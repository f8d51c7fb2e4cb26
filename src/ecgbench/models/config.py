"""The one vocabulary that describes an ELM.

:class:`ModelSettings` is the part a user sets (the ``[model]`` settings group, the ``train`` flags);
:class:`ELMConfig` extends it with what the trainer decides (architecture from the paradigm, signal
length and sampling rate from the segment store's manifest, the training stage) and is written into
every checkpoint. Each field is declared once, here. This module imports only pydantic, so settings
and command-line help can use it without loading torch.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

Architecture = Literal["token", "encoder", "encoder-free"]
Representation = Literal["tokens", "signal", "stacked", "image"]
Dtype = Literal["float32", "bfloat16", "float16"]
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]
LLMTraining = Literal["frozen", "lora", "full"]
ProjectorKind = Literal["linear", "mlp2"]

ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
REPRESENTATIONS: tuple[str, ...] = get_args(Representation)
DTYPES: tuple[str, ...] = get_args(Dtype)
ATTN_IMPLEMENTATIONS: tuple[str, ...] = get_args(AttnImplementation)


class ModelSettings(BaseModel):
    """The language model, how it is loaded and adapted, and the ECG front end: what a user chooses."""

    # defer_build: the schema is built on first use, so `--help` and `--version` do not pay for it
    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    llm: str = Field("tiny-llama", description="registry name, hub id, local directory or GGUF file")
    llm_dtype: Dtype = Field("float32", description="dtype of the LLM weights")
    attn_implementation: AttnImplementation = Field("sdpa", description="attention kernel")
    llm_training: LLMTraining = Field(
        "lora", description="how the LLM trains: frozen, LoRA adapters, or all weights"
    )
    lora_rank: int = Field(16, ge=1, le=4096, description="LoRA rank r")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank)")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    lora_target_modules: list[str] | None = Field(
        None, description="module names to adapt (default: the family's attention and MLP projections)"
    )
    gradient_checkpointing: bool = Field(False, description="recompute LLM activations in backward (less memory)")
    representation: Representation | None = Field(
        None, description="ECG input: tokens, signal, stacked or image (default: the paradigm's)"
    )
    encoder: str | None = Field(None, description="ECG or vision encoder (default: the paradigm's)")
    encoder_preset: Literal["tiny", "base"] = Field("tiny", description="size of a freshly built encoder")
    encoder_checkpoint: str | None = Field(None, description="stage-1 encoder checkpoint folder")
    projector: ProjectorKind = Field("mlp2", description="projector into the LLM: linear or 2-layer MLP")
    num_soft_tokens: int | None = Field(
        None, ge=1, description="pool each ECG to this many soft tokens (default: all encoder tokens)"
    )
    patch_size: int = Field(25, ge=1, description="encoder-free: samples (signal) or pixels per patch")
    image_size: int = Field(224, ge=16, description="side of image / stacked-signal inputs, pixels")
    embedding_init: Literal["mean", "symbols"] = Field(
        "symbols", description="new ECG-Byte rows: mean LLM embedding, or mean of the tokens spelling them"
    )
    train_new_embeddings: bool = Field(True, description="train the new ECG-Byte token rows")


class LoraSpec(BaseModel):
    """LoRA hyper-parameters as :func:`ecgbench.models.llm.apply_lora` takes them (peft builds the
    adapters); defaults are those of :class:`ModelSettings`."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    rank: int = Field(ModelSettings.model_fields["lora_rank"].default, ge=1)
    alpha: float = Field(ModelSettings.model_fields["lora_alpha"].default, gt=0)
    dropout: float = Field(ModelSettings.model_fields["lora_dropout"].default, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="None: the LLM family's default")


def lora_spec(settings: ModelSettings) -> LoraSpec | None:
    """The adapters the settings ask for; None unless the LLM trains by LoRA."""
    if settings.llm_training != "lora":
        return None
    return LoraSpec(
        rank=settings.lora_rank,
        alpha=settings.lora_alpha,
        dropout=settings.lora_dropout,
        target_modules=settings.lora_target_modules or None,
    )


class ELMConfig(ModelSettings):
    """Everything needed to rebuild an ELM; written as JSON inside every checkpoint."""

    architecture: Architecture
    #: tokens (ECG-Byte, token ELM), signal (B, 12, L), stacked or image (B, 3, H, W)
    representation: Representation  # type: ignore[assignment]  # required once the paradigm is known
    # Where the ECGs come from: set from the segment store's manifest, never guessed.
    signal_length: int = Field(ge=16, description="samples per lead of every ECG given to the ELM")
    fs: float = Field(gt=0, description="sampling rate of the ECGs, Hz (sets the image time scale)")
    ecg_tokenizer: str | None = Field(None, description="tokenizer.json the ELM was built with")
    encoder_options: dict[str, Any] = Field(default_factory=dict, description="build_encoder options")
    train_encoder: bool = Field(False, description="train the encoder with the language-modelling loss")
    training_stage: str = Field("initialised", description="set by the trainer that saved the checkpoint")
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> ELMConfig:
        if self.architecture == "token":
            if self.representation != "tokens":
                raise ValueError("the token ELM reads ECG-Byte symbols: representation must be 'tokens'")
        elif self.representation == "tokens":
            raise ValueError(f"the {self.architecture} ELM needs representation signal, stacked or image")
        if self.architecture == "encoder" and not self.encoder:
            raise ValueError("the encoder ELM needs an encoder name")
        if self.architecture != "encoder" and self.encoder:
            raise ValueError(f"the {self.architecture} ELM has no encoder")
        return self

    @property
    def lora(self) -> LoraSpec | None:
        return lora_spec(self)
