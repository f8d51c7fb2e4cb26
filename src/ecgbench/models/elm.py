"""The three ECG-language model (ELM) architectures behind one interface.

- ``token``: end to end. ECG-Byte ids become new LLM tokens (``<ecgb_0>`` ... plus ``<ecg_start>`` /
  ``<ecg_end>``) whose embedding rows live in a small table of their own (initialised from the
  LLM's embeddings, trainable or frozen by flag).
- ``encoder``: LLaVA style. An ECG/vision encoder, a projector and N soft tokens spliced into the
  input embeddings at the ``<ecg>`` placeholder positions; any number of ECGs per conversation.
- ``encoder-free``: a patch projector straight from the input representation to soft tokens.

All three compute ``inputs_embeds`` themselves and call the LLM with them, for training and for
generation alike, so the same left-padded batch path serves every architecture. The new rows are
kept out of the LLM's embedding matrix (no resize), which keeps what is trained small and lets the
LLM be frozen, LoRA-adapted or fully trained independently; ``checkpoint.export_merged`` writes them
into a plain transformers model when one is wanted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from transformers import GenerationConfig

from ecgbench.data.conversations import count_placeholders
from ecgbench.errors import UserError
from ecgbench.models.chat import (
    ECG_PLACEHOLDER,
    check_turns,
    end_of_turn_ids,
    pad_batch,
    render_prompt,
    tokenize_conversation,
)
from ecgbench.models.llm import LoraSpec
from ecgbench.models.projector import PatchProjector, Projector, ProjectorKind, pool_tokens

if TYPE_CHECKING:
    from ecgbench.models.encoders.base import ECGEncoder
    from ecgbench.models.llm import LoadedLLM
    from ecgbench.tokenizer import ECGByteTokenizer

ECG_START = "<ecg_start>"
ECG_END = "<ecg_end>"
#: truncation shrinks an ECG-Byte run no further than this many tokens
MIN_ECG_BYTE_TOKENS = 64

Architecture = Literal["token", "encoder", "encoder-free"]
ARCHITECTURES: tuple[str, ...] = ("token", "encoder", "encoder-free")


def ecg_byte_token(index: int) -> str:
    """The LLM token string for ECG-Byte id ``index``."""
    return f"<ecgb_{index}>"


class ELMConfig(BaseModel):
    """Everything needed to rebuild an ELM; written as JSON inside every checkpoint."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    architecture: Architecture
    #: tokens (ECG-Byte, token ELM), signal (B, 12, L), stacked or image (B, 3, H, W)
    representation: Literal["tokens", "signal", "stacked", "image"]
    llm: str = Field(description="registry name, hub id, local directory or GGUF file")
    llm_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    llm_training: Literal["frozen", "lora", "full"] = "lora"
    lora: LoraSpec = LoraSpec()
    gradient_checkpointing: bool = Field(
        False, description="recompute LLM activations in backward (saves memory)"
    )
    # token ELM
    ecg_tokenizer: str | None = Field(None, description="tokenizer.json the ELM was built with")
    embedding_init: Literal["mean", "symbols"] = Field(
        "symbols", description="new rows: mean LLM embedding, or mean of the tokens spelling the symbols"
    )
    train_new_embeddings: bool = True
    # encoder ELM
    encoder: str | None = None
    encoder_preset: Literal["tiny", "base"] = "tiny"
    encoder_checkpoint: str | None = Field(None, description="encoder checkpoint directory (save_pretrained)")
    encoder_options: dict[str, Any] = Field(default_factory=dict, description="build_encoder options")
    train_encoder: bool = False
    # encoder and encoder-free ELMs
    projector: ProjectorKind = "mlp2"
    num_soft_tokens: int | None = Field(None, ge=1, description="pool each ECG to this many soft tokens")
    patch_size: int = Field(25, ge=1, description="encoder-free: samples (signal) or pixels per patch")
    signal_length: int = Field(1250, ge=16, description="samples per lead of every ECG given to the ELM")
    image_size: int = Field(224, ge=16)
    fs: float = Field(250.0, gt=0, description="sampling rate of the ECGs (sets the image time scale)")
    # bookkeeping
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


def check_signals(ecgs: Sequence[np.ndarray] | np.ndarray, length: int | None) -> list[np.ndarray]:
    """Validate ECGs: (12, L) float, finite, with L == length when given."""
    arrays = []
    for i, ecg in enumerate(ecgs):
        arr = np.asarray(ecg, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != 12:
            raise UserError(f"ECG {i} has shape {arr.shape}; expected (12, samples)")
        if length is not None and arr.shape[1] != length:
            raise UserError(f"ECG {i} has {arr.shape[1]} samples per lead; this ELM reads {length}")
        if not np.isfinite(arr).all():
            raise UserError(f"ECG {i} contains NaN or infinite samples")
        arrays.append(arr)
    return arrays


class ELM(nn.Module):
    """An LLM plus the parts that turn ECGs into its input embeddings.

    Batches (from :meth:`collate`) hold ``input_ids``, ``attention_mask``, optionally ``labels``,
    and for soft-token ELMs ``ecg`` (all ECGs of the batch in conversation order, already in the
    model's representation) with ``ecg_owner`` (the conversation each ECG belongs to).
    """

    def __init__(
        self,
        config: ELMConfig,
        llm: LoadedLLM,
        *,
        ecg_tokenizer: ECGByteTokenizer | None = None,
        encoder: ECGEncoder | None = None,
    ):
        super().__init__()
        self.config = config
        self.llm = llm.model
        self.tokenizer = llm.tokenizer
        self.family = llm.family
        self.ecg_tokenizer = ecg_tokenizer
        self.encoder = encoder
        self.projector: nn.Module | None = None
        self.ecg_embeddings: nn.Embedding | None = None
        self.soft_tokens_per_ecg = 0

        if (config.llm_training == "lora") != hasattr(self.llm, "peft_config"):
            raise ValueError(
                f"llm_training={config.llm_training!r} but the given LLM is {type(self.llm).__name__}"
            )
        embedding = self.llm.get_input_embeddings()
        self.embedding_dim = int(embedding.weight.shape[1])
        if config.architecture == "token":
            if ecg_tokenizer is None:
                raise ValueError("the token ELM needs an ECG-Byte tokenizer")
            added = [ecg_byte_token(i) for i in range(ecg_tokenizer.vocab_size)] + [ECG_START, ECG_END]
        else:
            added = [ECG_PLACEHOLDER]
        self.first_new_id = self._add_tokens(added)
        self.num_new_tokens = len(added)
        if config.architecture == "token":
            self.ecg_start_id = self.first_new_id + ecg_tokenizer.vocab_size  # type: ignore[union-attr]
            self.ecg_end_id = self.ecg_start_id + 1
            self.ecg_embeddings = nn.Embedding(len(added), self.embedding_dim)
            self._init_new_rows(ecg_tokenizer)  # type: ignore[arg-type]
            self.ecg_embeddings.weight.requires_grad_(config.train_new_embeddings)
        else:
            self.placeholder_id = self.first_new_id
            self._build_soft_token_front_end()

        if config.llm_training == "frozen":
            self.llm.requires_grad_(False)
        elif config.llm_training == "full":
            self.llm.requires_grad_(True)
        # "lora": load_llm already froze the base and made the adapters trainable
        if self.encoder is not None:
            self.encoder.requires_grad_(config.train_encoder)
            if hasattr(self.encoder, "set_trainable"):  # vision towers track it for their train() mode
                self.encoder.set_trainable(config.train_encoder)

    # ------------------------------------------------------------------ construction

    def _add_tokens(self, tokens: list[str]) -> int:
        """Register ``tokens`` as special tokens of the LLM tokenizer; return the first (contiguous) id."""
        self.tokenizer.add_tokens(tokens, special_tokens=True)
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        first = int(ids[0])
        if list(ids) != list(range(first, first + len(tokens))):
            raise ValueError("the LLM tokenizer already holds some ECG tokens with non-contiguous ids")
        return first

    def _base_rows(self) -> torch.Tensor:
        """The LLM's input-embedding rows of real (pre-existing) tokens, float32."""
        weight = self.llm.get_input_embeddings().weight.detach()
        return weight[: min(self.first_new_id, weight.shape[0])].float()

    @torch.no_grad()
    def _init_new_rows(self, ecg_tokenizer: ECGByteTokenizer) -> None:
        """Start the new rows where real tokens live, with small noise so no two rows coincide."""
        rows = self._base_rows()
        mean, std = rows.mean(0), rows.std(0)
        init = mean.expand(self.num_new_tokens, -1).clone()
        if self.config.embedding_init == "symbols":
            base = rows.shape[0]
            for i, symbols in enumerate(ecg_tokenizer.token_strings):
                ids = [t for t in self.tokenizer(symbols, add_special_tokens=False)["input_ids"] if t < base]
                if ids:
                    init[i] = rows[ids].mean(0)
        init += 0.1 * std * torch.randn_like(init)
        self.ecg_embeddings.weight.copy_(init)  # type: ignore[union-attr]

    @torch.no_grad()
    def _build_soft_token_front_end(self) -> None:
        from ecgbench.models.inputs import to_representation

        cfg = self.config
        probe = to_representation(
            np.zeros((1, 12, cfg.signal_length), dtype=np.float32),
            kind=cfg.representation,
            image_size=cfg.image_size,
            fs=cfg.fs,
        )
        if cfg.architecture == "encoder":
            encoder = self.encoder
            if encoder is None:
                raise ValueError("the encoder ELM needs an encoder")
            if encoder.representation != cfg.representation:
                raise UserError(
                    f"encoder {cfg.encoder!r} reads {encoder.representation!r} input, "
                    f"but the ELM is configured for {cfg.representation!r}"
                )
            was_training = encoder.training
            encoder.eval()
            tokens = int(encoder.features(probe).shape[1])
            encoder.train(was_training)
            self.projector = Projector(cfg.projector, encoder.out_dim, self.embedding_dim)
        else:
            kind = cfg.representation
            self.projector = PatchProjector(
                kind, cfg.patch_size, int(probe.shape[1]), self.embedding_dim, cfg.projector
            )  # type: ignore[arg-type]
            tokens = self.projector.num_tokens(tuple(probe.shape[1:]))
            if tokens < 1:
                raise UserError(
                    f"patch size {cfg.patch_size} is larger than the input {tuple(probe.shape[1:])}"
                )
        self.soft_tokens_per_ecg = cfg.num_soft_tokens or tokens

    def train(self, mode: bool = True) -> ELM:
        super().train(mode)
        if self.encoder is not None and not self.config.train_encoder:
            self.encoder.eval()  # a frozen encoder keeps inference behaviour (dropout, norms)
        return self

    # ------------------------------------------------------------------ examples and batches

    def representation_of(self, ecgs: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """ECGs (12, L) -> the input tensor of the soft-token front end, (k, ...)."""
        from ecgbench.models.inputs import to_representation

        signals = np.stack(check_signals(ecgs, self.config.signal_length))
        return to_representation(
            signals, kind=self.config.representation, image_size=self.config.image_size, fs=self.config.fs
        )

    def _ecg_token_ids(self, ecgs: Sequence[np.ndarray]) -> list[list[int]]:
        if self.config.architecture == "token":
            signals = check_signals(ecgs, self.config.signal_length)
            encoded = self.ecg_tokenizer.encode_batch(signals)  # type: ignore[union-attr]
            return [(np.asarray(ids, dtype=np.int64) + self.first_new_id).tolist() for ids in encoded]
        return [[self.placeholder_id] * self.soft_tokens_per_ecg for _ in ecgs]

    def _check_turns(
        self, turns: Sequence[Mapping[str, str]], ecgs: Sequence[np.ndarray]
    ) -> list[dict[str, str]]:
        check_turns(turns)  # malformed turns (missing role or content) fail here in one line
        placeholders = count_placeholders(turns)
        if placeholders != len(ecgs):
            raise UserError(
                f"conversation has {placeholders} {ECG_PLACEHOLDER} placeholders but {len(ecgs)} ECGs"
            )
        if self.config.architecture != "token":
            return [dict(turn) for turn in turns]
        # Bracket each ECG-Byte run; the brackets are tokenizer special tokens, so they survive as text.
        wrapped = f"{ECG_START}{ECG_PLACEHOLDER}{ECG_END}"
        return [
            {**turn, "content": turn["content"].replace(ECG_PLACEHOLDER, wrapped)}
            if turn["role"] == "user"
            else dict(turn)
            for turn in turns
        ]

    def _kept_ecgs(self, input_ids: Sequence[int], ecgs: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        """ECGs whose placeholders survived truncation (the oldest turns are dropped first)."""
        if self.config.architecture == "token" or not len(ecgs):
            return ecgs
        count, remainder = divmod(
            sum(1 for t in input_ids if t == self.placeholder_id), self.soft_tokens_per_ecg
        )
        if remainder:
            raise RuntimeError("an ECG's soft-token run was cut by truncation; raise max_length")
        return ecgs[len(ecgs) - count :]

    def prepare_example(
        self,
        turns: Sequence[Mapping[str, str]],
        ecgs: Sequence[np.ndarray] = (),
        *,
        max_length: int,
        system: str | None = None,
        min_ecg_tokens: int | None = None,
    ) -> dict[str, Any]:
        """One training example: ids, attention mask, labels (assistant spans only) and ECG inputs."""
        checked = self._check_turns(turns, ecgs)
        if min_ecg_tokens is None:
            min_ecg_tokens = self._min_ecg_tokens()
        encoded = tokenize_conversation(
            self.tokenizer,
            self.family,
            checked,
            max_length=max_length,
            ecg_token_ids=self._ecg_token_ids(ecgs),
            min_ecg_tokens=min_ecg_tokens,
            system=system,
        )
        example = {key: list(encoded[key]) for key in ("input_ids", "labels", "attention_mask")}
        example["ecg"] = self._front_end_input(self._kept_ecgs(example["input_ids"], ecgs))
        return example

    def prepare_prompt(
        self,
        turns: Sequence[Mapping[str, str]],
        ecgs: Sequence[np.ndarray] = (),
        *,
        max_length: int | None = None,
        system: str | None = None,
    ) -> dict[str, Any]:
        """A generation prompt (turns ending with a user turn) ready for ``collate(..., "left")``."""
        checked = self._check_turns(turns, ecgs)
        kwargs: dict[str, Any] = {"ecg_token_ids": self._ecg_token_ids(ecgs), "system": system}
        if max_length is not None:
            kwargs["max_length"] = max_length
            kwargs["min_ecg_tokens"] = self._min_ecg_tokens()
        ids = [int(t) for t in render_prompt(self.tokenizer, self.family, checked, **kwargs)]
        return {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "ecg": self._front_end_input(self._kept_ecgs(ids, ecgs)),
        }

    def _front_end_input(self, ecgs: Sequence[np.ndarray]) -> torch.Tensor | None:
        if self.config.architecture == "token":
            return None
        return self.representation_of(ecgs) if len(ecgs) else None

    def _min_ecg_tokens(self) -> int:
        # soft-token runs cannot shrink; ECG-Byte runs may, down to a floor that still carries a beat or two
        return self.soft_tokens_per_ecg if self.config.architecture != "token" else MIN_ECG_BYTE_TOKENS

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def collate(
        self, examples: Sequence[Mapping[str, Any]], padding_side: Literal["left", "right"] = "right"
    ) -> dict[str, torch.Tensor]:
        """Pad examples into a batch: right padding for training, left padding for generation."""
        padded = pad_batch(examples, self.pad_token_id, side=padding_side)
        batch = {key: torch.tensor(rows, dtype=torch.long) for key, rows in padded.items()}
        ecg = [ex["ecg"] for ex in examples if ex.get("ecg") is not None]
        if ecg:
            batch["ecg"] = torch.cat(ecg)
            batch["ecg_owner"] = torch.tensor(
                [
                    row
                    for row, ex in enumerate(examples)
                    if ex.get("ecg") is not None
                    for _ in range(len(ex["ecg"]))
                ],
                dtype=torch.long,
            )
        return batch

    # ------------------------------------------------------------------ model

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def soft_tokens(self, ecg: torch.Tensor) -> torch.Tensor:
        """ECG inputs (B_ecg, ...) -> soft tokens (B_ecg, N, embedding_dim)."""
        assert self.projector is not None
        if isinstance(self.projector, PatchProjector):
            tokens = self.projector(ecg)
        else:
            assert self.encoder is not None
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.train_encoder):
                features = self.encoder.features(ecg)
            tokens = self.projector(features)
        return pool_tokens(tokens, self.soft_tokens_per_ecg)

    def embed(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The LLM input embeddings for a batch, with ECG rows or soft tokens in place."""
        device = self.device
        ids = batch["input_ids"].to(device)
        embedding = self.llm.get_input_embeddings()
        new = ids >= self.first_new_id
        embeds = embedding(ids.masked_fill(new, 0))  # new ids may lie beyond the LLM's rows
        if self.config.architecture == "token":
            if new.any():
                rows = self.ecg_embeddings(ids[new] - self.first_new_id).to(embeds.dtype)  # type: ignore[misc]
                embeds = embeds.masked_scatter(new.unsqueeze(-1), rows)
            return embeds
        slots = ids == self.placeholder_id
        per_row = slots.sum(1)
        ecg = batch.get("ecg")
        if ecg is None or len(ecg) == 0:
            if per_row.any():
                raise ValueError("batch has ECG placeholders but no ECG inputs")
            return embeds
        owner = batch["ecg_owner"].to(device)
        expected = torch.bincount(owner, minlength=ids.shape[0]) * self.soft_tokens_per_ecg
        if not torch.equal(per_row, expected):
            raise ValueError(
                f"placeholders per row {per_row.tolist()} != ECGs x soft tokens {expected.tolist()}"
            )
        if not torch.all(owner[1:] >= owner[:-1]):
            raise ValueError("batch['ecg'] must be in conversation order")
        front_dtype = next(self.projector.parameters()).dtype  # type: ignore[union-attr]
        tokens = self.soft_tokens(ecg.to(device=device, dtype=front_dtype)).to(embeds.dtype)
        return embeds.masked_scatter(slots.unsqueeze(-1), tokens.reshape(-1, self.embedding_dim))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Any:
        """Causal-LM output (``loss`` when the batch has labels, ``logits``)."""
        labels = batch.get("labels")
        return self.llm(
            inputs_embeds=self.embed(batch),
            attention_mask=batch["attention_mask"].to(self.device),
            labels=labels.to(self.device) if labels is not None else None,
        )

    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: the template's end-of-turn markers and the EOS token(s)."""
        stops = list(end_of_turn_ids(self.tokenizer, self.family))
        for source in (self.llm.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            for value in source if isinstance(source, list) else [source]:
                if value is not None and int(value) not in stops:
                    stops.append(int(value))
        return stops

    def suppressed_ids(self) -> list[int]:
        """New ECG token ids that fall inside the LLM's output layer (only where it has spare rows)."""
        out_rows = self.llm.get_output_embeddings().weight.shape[0]
        return list(range(self.first_new_id, min(self.first_new_id + self.num_new_tokens, out_rows)))

    @torch.no_grad()
    def generate(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """Answers for a left-padded batch of prompts (only the new text, special tokens removed)."""
        return [
            self.decode(ids)
            for ids in self.generate_ids(batch, max_new_tokens=max_new_tokens, do_sample=do_sample, **kwargs)
        ]

    @torch.no_grad()
    def generate_ids(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        **kwargs: Any,
    ) -> list[list[int]]:
        """New token ids per prompt, cut after the first stop token."""
        mask = batch["attention_mask"].to(self.device)
        if bool((mask[:, -1] == 0).any()):
            raise ValueError("generation needs a left-padded batch: collate(..., padding_side='left')")
        stops = self.stop_token_ids()
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=self.pad_token_id,
            eos_token_id=stops,
            suppress_tokens=self.suppressed_ids() or None,
            **kwargs,
        )
        was_training = self.training
        self.eval()
        try:
            # With inputs_embeds and no input_ids, generate returns only the new tokens (no prompt to cut).
            out = self.llm.generate(
                inputs_embeds=self.embed(batch), attention_mask=mask, generation_config=config
            )
        finally:
            self.train(was_training)
        result = []
        for row in out.tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            result.append(row[:cut])
        return result

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def save(self, directory: str | Path) -> Path:
        """Write a self-describing checkpoint folder (see ``ecgbench.models.checkpoint``)."""
        from ecgbench.models.checkpoint import save_elm

        return save_elm(self, directory)


def build_elm(
    config: ELMConfig,
    *,
    ecg_tokenizer: ECGByteTokenizer | str | Path | None = None,
    encoder: ECGEncoder | None = None,
    llm: LoadedLLM | None = None,
    llm_source: str | None = None,
) -> ELM:
    """Build a fresh ELM from its config, deterministically from ``config.seed``.

    ``ecg_tokenizer`` (token ELM) is a tokenizer or its ``tokenizer.json``; ``encoder`` (encoder ELM)
    an already built encoder, else ``build_encoder(config.encoder, ...)`` makes it; ``llm`` an already
    loaded LLM, else ``load_llm`` loads ``llm_source`` or ``config.llm``.
    """
    if config.architecture == "token":
        ecg_tokenizer = _resolve_ecg_tokenizer(config, ecg_tokenizer)
    # Each part draws from its own seeded stream, so random initialisations (tiny LLM presets, LoRA,
    # projector, new rows) come out the same whether or not another part was given ready-made.
    with torch.random.fork_rng(devices=[]):
        if config.architecture == "encoder" and encoder is None:
            torch.manual_seed(config.seed)
            encoder = build_config_encoder(config, config.encoder_checkpoint)
        if llm is None:
            torch.manual_seed(config.seed)
            llm = load_base_llm(config, llm_source)
        torch.manual_seed(config.seed)
        return ELM(config, llm, ecg_tokenizer=ecg_tokenizer, encoder=encoder)  # type: ignore[arg-type]


def build_config_encoder(config: ELMConfig, checkpoint: str | None) -> ECGEncoder:
    """The encoder the config names, from ``checkpoint`` or freshly initialised."""
    from ecgbench.models.encoders import VISION_ENCODERS, build_encoder

    options = dict(config.encoder_options)
    if config.encoder in VISION_ENCODERS:
        options.setdefault("representation", config.representation)
    return build_encoder(config.encoder, preset=config.encoder_preset, checkpoint=checkpoint, **options)


def load_base_llm(config: ELMConfig, source: str | None = None) -> LoadedLLM:
    """The LLM named by the config (or ``source``), LoRA-wrapped when the config adapts it with LoRA."""
    from ecgbench.models.llm import load_llm

    return load_llm(
        source or config.llm,
        dtype=config.llm_dtype,
        attn_implementation=config.attn_implementation,
        lora=config.lora if config.llm_training == "lora" else None,
        gradient_checkpointing=config.gradient_checkpointing,
    )


def _resolve_ecg_tokenizer(
    config: ELMConfig, given: ECGByteTokenizer | str | Path | None
) -> ECGByteTokenizer:
    from ecgbench.tokenizer import ECGByteTokenizer

    if given is None:
        if not config.ecg_tokenizer:
            raise UserError("the token ELM needs an ECG-Byte tokenizer (tokenizer.json)")
        given = config.ecg_tokenizer
    if isinstance(given, str | Path):
        path = Path(given)
        if not path.is_file():
            raise UserError(f"ECG-Byte tokenizer not found: {path}")
        config.ecg_tokenizer = str(path)
        return ECGByteTokenizer.load(path)
    return given
