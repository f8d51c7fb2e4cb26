"""Random-initialised model folders at real sizes, for GPU throughput checks (bench/gpu_train.sh).

Speed and memory depend on the shapes, not on the weight values, and the real weights cannot travel to
the GPU machine (over its 64 MiB transfer limit), so each folder holds the real architecture and real
tokenizer at full size with random weights:

- ``smollm2-135m``: SmolLM2-135M-Instruct's exact config (Llama, 30 layers, width 576, vocab 49152);
- ``qwen2.5-0.5b``: Qwen2.5-0.5B's shapes (24 layers, width 896, 14 heads / 2 KV heads, vocab 151936).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config


def _smollm2(tokenizer_dir: Path) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True, vocab_size=49152, bos_token_id=1, eos_token_id=2,
        pad_token_id=2,
    )


def _qwen(tokenizer_dir: Path) -> Qwen2Config:
    return Qwen2Config(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, vocab_size=151936, bos_token_id=151643, eos_token_id=151645,
        pad_token_id=151643,
    )


MODELS = {"smollm2-135m": _smollm2, "qwen2.5-0.5b": _qwen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(MODELS))
    parser.add_argument("--tokenizer", type=Path, required=True, help="folder of the family's tokenizer.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = MODELS[args.name](args.tokenizer)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(args.out)
    for extra in ("chat_template.jinja",):
        if (args.tokenizer / extra).is_file():
            shutil.copy(args.tokenizer / extra, args.out / extra)
    print(f"wrote {args.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
