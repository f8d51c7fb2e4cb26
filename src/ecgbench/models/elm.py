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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers import GenerationConfig

from ecgbench.errors import UserError
from ecgbench.models.chat import end_of_turn_ids
from ecgbench.models.config import ARCHITECTURES, ELMConfig
from ecgbench.models.processor import ELMProcessor
from ecgbench.models.projector import PatchProjector, Projector, pool_tokens

if TYPE_CHECKING:
    from ecgbench.models.encoders.base import ECGEncoder
    from ecgbench.models.llm import LoadedLLM
    from ecgbench.tokenizer import ECGByteTokenizer

__all__ = ["ARCHITECTURES", "ELM", "ELMConfig", "build_elm"]


class ELM(nn.Module):
    """An LLM plus the parts that turn ECGs into its input embeddings.

    Batches (from ``self.processor.collate``) hold ``input_ids``, ``attention_mask``, optionally ``labels``,
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

        if (config.llm_training == "lora") != hasattr(self.llm, "peft_config"):
            raise ValueError(
                f"llm_training={config.llm_training!r} but the given LLM is {type(self.llm).__name__}"
            )
        embedding = self.llm.get_input_embeddings()
        self.embedding_dim = int(embedding.weight.shape[1])
        soft_tokens = self._build_soft_token_front_end() if config.architecture != "token" else 0
        #: everything that turns conversations into batches; weight-free, so DataLoader workers hold it
        self.processor = ELMProcessor(
            config, self.tokenizer, self.family, ecg_tokenizer=ecg_tokenizer, soft_tokens_per_ecg=soft_tokens
        )
        self.first_new_id = self.processor.first_new_id
        self.num_new_tokens = self.processor.num_new_tokens
        self.soft_tokens_per_ecg = self.processor.soft_tokens_per_ecg
        if config.architecture == "token":
            self.ecg_embeddings = nn.Embedding(self.num_new_tokens, self.embedding_dim)
            self._init_new_rows(ecg_tokenizer)  # type: ignore[arg-type]
            self.ecg_embeddings.weight.requires_grad_(config.train_new_embeddings)
        else:
            self.placeholder_id = self.processor.placeholder_id

        if config.llm_training == "frozen":
            self.llm.requires_grad_(False)
        elif config.llm_training == "full":
            self.llm.requires_grad_(True)
        # "lora": load_llm already froze the base and made the adapters trainable
        if self.encoder is not None:
            self.encoder.set_trainable(config.train_encoder)

    # ------------------------------------------------------------------ construction

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
    def _build_soft_token_front_end(self) -> int:
        """Build the projector; return the soft tokens each ECG becomes."""
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
        return cfg.num_soft_tokens or tokens

    def train(self, mode: bool = True) -> ELM:
        super().train(mode)
        if self.encoder is not None and not self.config.train_encoder:
            self.encoder.eval()  # a frozen encoder keeps inference behaviour (dropout, norms)
        return self

    @property
    def pad_token_id(self) -> int:
        return self.processor.pad_token_id

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

    def forward(self, batch: Mapping[str, torch.Tensor], *, num_items_in_batch: float | None = None) -> Any:
        """Causal-LM output (``loss`` when the batch has labels, ``logits``).

        ``num_items_in_batch``: the loss is the sum over label tokens divided by it (the answer tokens
        of a whole accumulated batch) instead of the mean over this batch's label tokens."""
        labels = batch.get("labels")
        extra = {} if num_items_in_batch is None or labels is None else {"num_items_in_batch": num_items_in_batch}
        return self.llm(
            inputs_embeds=self.embed(batch),
            attention_mask=batch["attention_mask"].to(self.device),
            labels=labels.to(self.device) if labels is not None else None,
            **extra,
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
        streamer: Any = None,
        **kwargs: Any,
    ) -> list[list[int]]:
        """New token ids per prompt, cut after the first stop token. ``streamer``: a transformers streamer
        (``TextIteratorStreamer``) that receives the new tokens as they are made (one prompt only)."""
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
                inputs_embeds=self.embed(batch),
                attention_mask=mask,
                generation_config=config,
                streamer=streamer,
            )
        finally:
            self.train(was_training)
        result = []
        for row in out.tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            result.append(row[:cut])
        return result

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode(ids)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


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
