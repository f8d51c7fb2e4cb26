"""Real inputs shared by the ELM and checkpoint tests: bundled PTB-XL waveforms and ECG-QA questions."""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import torch
import wfdb
from scipy.signal import decimate

from ecgbench.models.elm import ELM, ELMConfig, build_elm, load_base_llm
from ecgbench.models.llm import LoadedLLM
from ecgbench.resources import SAMPLE_DIR
from ecgbench.tokenizer import ECGByteTokenizer

#: tiny presets (real architectures and vocabularies, random weights) per LLM family
TINY_LLMS = {
    "llama": "tiny-llama",
    "qwen2": "tiny-qwen2",
    "gemma2": "tiny-gemma2",
    "gpt2": "tiny-gpt2",
    "opt": "tiny-opt",
}
SIGNAL_LENGTH = 500  # 5 s at 100 Hz: short enough for fast tests, long enough for beats


@functools.cache
def real_ecgs() -> tuple[np.ndarray, ...]:
    """5 s, 100 Hz, 12-lead segments in mV, canonical lead order, from the bundled PTB-XL records.

    PTB-XL ecg_id 1 (records100, 100 Hz) and ecg_ids 6000-6004 (CinC 2021 copies, 500 Hz, decimated
    by 5 with an anti-aliasing filter): two segments each, 12 in all.
    """
    records = [(SAMPLE_DIR / "ptbxl" / "records100" / "00000" / "00001_lr", 1)]
    records += [(SAMPLE_DIR / "ptbxl_cinc2021" / f"HR0600{i}", 5) for i in range(5)]
    segments = []
    for path, factor in records:
        record = wfdb.rdrecord(str(path))
        signal = record.p_signal.T.astype(np.float64)  # (12, L), leads already I II III aVR aVL aVF V1-V6
        if factor > 1:
            signal = decimate(signal, factor, axis=1, zero_phase=True)
        for start in (0, SIGNAL_LENGTH):
            segments.append(np.ascontiguousarray(signal[:, start : start + SIGNAL_LENGTH], dtype=np.float32))
    return tuple(segments)


@functools.cache
def ecg_byte_tokenizer() -> ECGByteTokenizer:
    return ECGByteTokenizer.train(np.stack(real_ecgs()), num_merges=300)


@functools.cache
def ecgqa_items() -> tuple[dict, dict]:
    """A real single-ECG question and a real two-ECG comparison question from the bundled ECG-QA sample."""
    single = json.loads((SAMPLE_DIR / "ecgqa/ptbxl/paraphrased/train/120000.json").read_text())[0]
    comparison = json.loads((SAMPLE_DIR / "ecgqa/ptbxl/paraphrased/test/80000.json").read_text())[0]
    return single, comparison


def conversations() -> list[tuple[list[dict[str, str]], list[np.ndarray]]]:
    """(turns, ECGs) pairs: one ECG, two ECGs (comparison), and a two-round chat with an ECG in each round."""
    single, comparison = ecgqa_items()
    ecgs = real_ecgs()
    return [
        (
            [
                {"role": "user", "content": f"<ecg>\n{single['question']}"},
                {"role": "assistant", "content": ", ".join(single["answer"])},
            ],
            [ecgs[0]],
        ),
        (
            [
                {"role": "user", "content": f"First ECG: <ecg>\nSecond ECG: <ecg>\n{comparison['question']}"},
                {"role": "assistant", "content": ", ".join(comparison["answer"])},
            ],
            [ecgs[2], ecgs[4]],
        ),
        (
            [
                {"role": "user", "content": "<ecg>\nIs this ECG normal?"},
                {"role": "assistant", "content": "yes"},
                {"role": "user", "content": "And this one? <ecg>"},
                {"role": "assistant", "content": "no, it shows noise in lead aVL"},
            ],
            [ecgs[6], ecgs[8]],
        ),
    ]


#: every architecture x representation, with tiny front-end settings
ELM_VARIANTS: dict[str, dict] = {
    "token": {"architecture": "token", "representation": "tokens"},
    "encoder-signal": {
        "architecture": "encoder",
        "representation": "signal",
        "encoder": "st-mem",
        "num_soft_tokens": 6,
    },
    "encoder-stacked": {
        "architecture": "encoder",
        "representation": "stacked",
        "encoder": "vit",
        "image_size": 64,
        "num_soft_tokens": 4,
    },
    "encoder-image": {
        "architecture": "encoder",
        "representation": "image",
        "encoder": "clip",
        "image_size": 64,
        "num_soft_tokens": 4,
    },
    "free-signal": {"architecture": "encoder-free", "representation": "signal", "patch_size": 50},
    "free-stacked": {
        "architecture": "encoder-free",
        "representation": "stacked",
        "patch_size": 16,
        "image_size": 32,
    },
    "free-image": {
        "architecture": "encoder-free",
        "representation": "image",
        "patch_size": 16,
        "image_size": 32,
    },
}


@functools.cache
def _loaded_llm(llm_settings: str, architecture: str) -> LoadedLLM:
    config = ELMConfig.model_validate_json(llm_settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # as build_elm does, so copies equal a fresh build
        return load_base_llm(config)


def make_elm(variant: str, family: str = "gpt2", **overrides: object) -> ELM:
    """A tiny ELM equal to ``build_elm(config)``, faster: each LLM setting is loaded once (a real
    128k-262k vocabulary takes seconds) and its weights copied. The tokenizer is shared between ELMs of
    one architecture, which add the same tokens to it (so only the first build changes it)."""
    fields = {**ELM_VARIANTS[variant], "llm": TINY_LLMS[family], "signal_length": SIGNAL_LENGTH, "fs": 100.0}
    fields.update(overrides)
    config = ELMConfig(**fields)
    tokenizer = ecg_byte_tokenizer() if config.architecture == "token" else None
    keep = {"llm", "llm_dtype", "attn_implementation", "llm_training", "seed", "signal_length", "fs"}
    keep |= {name for name in ELMConfig.model_fields if name.startswith("lora_")}
    settings = ELMConfig(
        architecture="encoder-free", representation="signal", **config.model_dump(include=keep)
    )
    cached = _loaded_llm(settings.model_dump_json(), "token" if config.architecture == "token" else "soft")
    llm = LoadedLLM(copy.deepcopy(cached.model), cached.tokenizer, cached.family, cached.name)
    return build_elm(config, ecg_tokenizer=tokenizer, llm=llm)


def sharpen(elm: ELM, scale: float = 0.5) -> None:
    """Give the trainable parts large random values, so a random tiny model's greedy output varies
    with its input (with the default small init every prompt decodes to the same token)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in elm.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


def train_steps(elm: ELM, batch: dict, steps: int, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in elm.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    elm.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = elm(batch).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
