"""The weight-free ELM processor: conversations and ECGs in, training examples or prompts out.

One processor serves training, DPO, inference, judging and the demo. It holds the ELM config, the LLM
tokenizer (with the ECG tokens registered), the ECG-Byte tokenizer of a token ELM and the number of
soft tokens per ECG, and nothing with weights, so DataLoader workers build examples (ECG-Byte ids,
rendered images, encoder inputs) in parallel. It pickles: spawned workers receive a copy.

Token layout (the ELM builds its embedding table on it):

- token ELM: ``<ecgb_0>`` ... ``<ecgb_{V-1}>``, ``<ecg_start>``, ``<ecg_end>`` as contiguous new ids;
  each ECG becomes ``<ecg_start>`` + its ECG-Byte ids + ``<ecg_end>``;
- soft-token ELMs: one ``<ecg>`` id repeated ``soft_tokens_per_ecg`` times per ECG, which the ELM
  replaces by the projector's output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ecgbench.data.conversations import ECG_PLACEHOLDER, count_placeholders
from ecgbench.errors import UserError
from ecgbench.models.chat import (
    check_turns,
    pad_batch,
    render_prompt,
    special_token_ids,
    tokenize_conversation,
)
from ecgbench.models.config import ELMConfig

if TYPE_CHECKING:
    from ecgbench.tokenizer import ECGByteTokenizer

ECG_START = "<ecg_start>"
ECG_END = "<ecg_end>"
#: truncation shrinks an ECG-Byte run no further than this many tokens
MIN_ECG_BYTE_TOKENS = 64


def ecg_byte_token(index: int) -> str:
    """The LLM token string for ECG-Byte id ``index``."""
    return f"<ecgb_{index}>"


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


class ELMProcessor:
    """Turns (turns, ECG arrays) into examples (dicts of ids, labels, mask and ECG input) and batches."""

    #: retrieved context (``ecgbench.rag.retrieval.Retrieval``, set by ``--rag``): inserted by both
    #: ``prepare_example`` and ``prepare_prompt``, so training and inference see it alike
    retrieval: Any = None

    def __init__(
        self,
        config: ELMConfig,
        tokenizer: Any,
        family: str,
        *,
        ecg_tokenizer: ECGByteTokenizer | None = None,
        soft_tokens_per_ecg: int = 0,
    ):
        self.config = config
        self.tokenizer = tokenizer
        self.family = family
        self.ecg_tokenizer = ecg_tokenizer
        if config.architecture == "token":
            if ecg_tokenizer is None:
                raise ValueError("the token ELM needs an ECG-Byte tokenizer")
            added = [ecg_byte_token(i) for i in range(ecg_tokenizer.vocab_size)] + [ECG_START, ECG_END]
            self.soft_tokens_per_ecg = 0
        else:
            if soft_tokens_per_ecg < 1:
                raise ValueError("a soft-token ELM needs soft_tokens_per_ecg >= 1")
            added = [ECG_PLACEHOLDER]
            self.soft_tokens_per_ecg = int(soft_tokens_per_ecg)
        self.first_new_id = self._add_tokens(added)
        self.num_new_tokens = len(added)
        #: read once: slow on a vocabulary holding thousands of added ECG tokens
        self.special_ids = special_token_ids(tokenizer)
        if config.architecture == "token":
            self.ecg_start_id = self.first_new_id + ecg_tokenizer.vocab_size  # type: ignore[union-attr]
            self.ecg_end_id = self.ecg_start_id + 1
        else:
            self.placeholder_id = self.first_new_id

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.ecg_tokenizer is not None:  # the Rust tokenizer travels as its versioned JSON
            state["ecg_tokenizer"] = json.dumps(self.ecg_tokenizer.to_json())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("ecg_tokenizer"), str):
            from ecgbench.tokenizer import ECGByteTokenizer

            state["ecg_tokenizer"] = ECGByteTokenizer.from_json(json.loads(state["ecg_tokenizer"]))
        self.__dict__.update(state)

    # ------------------------------------------------------------------ tokens

    def _add_tokens(self, tokens: list[str]) -> int:
        """Register ``tokens`` as special tokens of the LLM tokenizer; return the first (contiguous) id.

        Idempotent: a tokenizer saved with an ELM already holds them and keeps their ids."""
        self.tokenizer.add_tokens(tokens, special_tokens=True)
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        first = int(ids[0])
        if list(ids) != list(range(first, first + len(tokens))):
            raise ValueError("the LLM tokenizer already holds some ECG tokens with non-contiguous ids")
        return first

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    @property
    def min_ecg_tokens(self) -> int:
        # soft-token runs cannot shrink; ECG-Byte runs may, down to a floor that still carries a beat or two
        return self.soft_tokens_per_ecg if self.config.architecture != "token" else MIN_ECG_BYTE_TOKENS

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ ECG inputs

    def representation_of(self, ecgs: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
        """ECGs (12, L) -> the input tensor of the soft-token front end, (k, ...)."""
        from ecgbench.models.inputs import to_representation

        signals = np.stack(check_signals(ecgs, self.config.signal_length))
        return to_representation(  # type: ignore[return-value]
            signals, kind=self.config.representation, image_size=self.config.image_size, fs=self.config.fs
        )

    def ecg_token_ids(self, ecgs: Sequence[np.ndarray]) -> list[list[int]]:
        """The token run each ECG occupies in the input ids."""
        if self.config.architecture == "token":
            signals = check_signals(ecgs, self.config.signal_length)
            encoded = self.ecg_tokenizer.encode_batch(signals, threads=1)  # type: ignore[union-attr]
            return [(np.asarray(ids, dtype=np.int64) + self.first_new_id).tolist() for ids in encoded]
        return [[self.placeholder_id] * self.soft_tokens_per_ecg for _ in ecgs]

    def _checked_turns(
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

    def _front_end_input(self, ecgs: Sequence[np.ndarray]) -> torch.Tensor | None:
        if self.config.architecture == "token" or not len(ecgs):
            return None
        return self.representation_of(ecgs)

    # ------------------------------------------------------------------ examples and batches

    def prepare_example(
        self,
        turns: Sequence[Mapping[str, str]],
        ecgs: Sequence[np.ndarray] = (),
        *,
        max_length: int,
        system: str | None = None,
        min_ecg_tokens: int | None = None,
        refs: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """One training example: ids, attention mask, labels (assistant spans only) and ECG inputs.
        ``refs`` (the ECGs' records) are needed with :attr:`retrieval`, to exclude them."""
        if self.retrieval is not None:
            turns, system = self.retrieval.apply(turns, system, ecgs, refs)
        checked = self._checked_turns(turns, ecgs)
        encoded = tokenize_conversation(
            self.tokenizer,
            self.family,
            checked,
            max_length=max_length,
            ecg_token_ids=self.ecg_token_ids(ecgs),
            min_ecg_tokens=self.min_ecg_tokens if min_ecg_tokens is None else min_ecg_tokens,
            system=system,
            special_ids=self.special_ids,
        )
        example: dict[str, Any] = dict(encoded)  # fresh lists: input_ids, labels, attention_mask
        example["ecg"] = self._front_end_input(self._kept_ecgs(example["input_ids"], ecgs))
        return example

    def prepare_prompt(
        self,
        turns: Sequence[Mapping[str, str]],
        ecgs: Sequence[np.ndarray] = (),
        *,
        max_length: int | None = None,
        system: str | None = None,
        refs: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """A generation prompt (turns ending with a user turn) ready for ``collate(..., "left")``."""
        if self.retrieval is not None:
            turns, system = self.retrieval.apply(turns, system, ecgs, refs)
        checked = self._checked_turns(turns, ecgs)
        kwargs: dict[str, Any] = {
            "ecg_token_ids": self.ecg_token_ids(ecgs),
            "system": system,
            "special_ids": self.special_ids,
        }
        if max_length is not None:
            kwargs["max_length"] = max_length
            kwargs["min_ecg_tokens"] = self.min_ecg_tokens
        ids = [int(t) for t in render_prompt(self.tokenizer, self.family, checked, **kwargs)]
        return {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "ecg": self._front_end_input(self._kept_ecgs(ids, ecgs)),
        }

    def collate(
        self, examples: Sequence[Mapping[str, Any]], padding_side: Literal["left", "right"] = "right"
    ) -> dict[str, torch.Tensor]:
        """Pad examples to the longest of the batch: right padding to train, left padding to generate."""
        padded = pad_batch(examples, self.pad_token_id, side=padding_side)
        batch = {key: torch.tensor(rows, dtype=torch.long) for key, rows in padded.items()}
        ecg = [ex.get("ecg") for ex in examples]
        present = [e for e in ecg if e is not None]
        if present:
            batch["ecg"] = torch.cat(present)
            batch["ecg_owner"] = torch.tensor(
                [row for row, e in enumerate(ecg) if e is not None for _ in range(len(e))], dtype=torch.long
            )
        return batch
