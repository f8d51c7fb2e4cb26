#!/usr/bin/env bash
# GPU throughput check of ELM training (issue 9): bf16 end2end and encoder ELM training tokens/s and peak
# memory, SmolLM2-135M and Qwen2.5-0.5B shapes, sdpa and (where its wheel is there) flash_attention_2.
#
#   bench/gpu_train.sh prepare    here, on the CPU machine: wheels + bundled-sample inputs into .gpu/
#   bench/gpu_train.sh run        on the GPU machine (device tool: carry [".gpu"]); under 8 minutes
#
# The GPU image has torch, transformers, peft, accelerate, pyarrow, scipy, typer and rich; the rest
# (ecgbench itself, pydantic, wfdb, gguf) travels as wheels. Prints one table: model, ELM, attention,
# tokens/s (median over the logged windows after the first), peak GiB.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu
PY=${PYTHON:-python3}

prepare() {
  rm -rf "$GPU" && mkdir -p "$GPU/whl" "$GPU/inputs"
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  .venv/bin/maturin build --release -q -o "$GPU/whl"
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$GPU/whl" pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv \
    wfdb soundfile gguf
  local E=.venv/bin/ecgbench in="$GPU/inputs"
  $E data prepare sample --out "$in/store" >/dev/null
  $E data map labels --store "$in/store" --out "$in/sets" --questions-per-record 8 >/dev/null
  $E data split --store "$in/store" --sets "$in/sets/labels.parquet" --out "$in/split" --folds 5 >/dev/null
  $E tokenizer train --store "$in/store" --splits "$in/split/splits.parquet" --split train \
    --num-merges 3500 --out "$in/tokenizer.json" >/dev/null
  local assets=.venv/share/ecgbench/assets
  cp -r "$assets/smollm2/hf" "$in/smollm2-tokenizer" && rm -f "$in/smollm2-tokenizer/model.safetensors"
  cp -r "$assets/tokenizers/qwen2" "$in/qwen2-tokenizer"
  du -sh "$GPU"
}

run() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$GPU"/whl/*.whl && export PYTHONPATH=/tmp/site
  local in="$GPU/inputs" work=/tmp/gpu_train
  rm -rf "$work" && mkdir -p "$work"
  python3 bench/gpu_models.py smollm2-135m --tokenizer "$in/smollm2-tokenizer" --out "$work/smollm2-135m"
  python3 bench/gpu_models.py qwen2.5-0.5b --tokenizer "$in/qwen2-tokenizer" --out "$work/qwen2.5-0.5b"
  local attns=(sdpa)
  python3 -c "import flash_attn" 2>/dev/null && attns+=(flash_attention_2)
  local common=(--store "$in/store" --sets "$in/split/labels.parquet" --llm-dtype bfloat16 --mixed-precision bf16
    --max-steps 40 --batch-size 16 --max-length 1024 --eval-every 40 --log-every 5 --num-workers 6
    --report-to none --llm-training lora)
  printf '%-14s %-13s %-18s %12s %9s\n' model elm attention tokens/s peak_GiB
  for model in smollm2-135m qwen2.5-0.5b; do
    for attn in "${attns[@]}"; do
      for elm in end2end encoder-e2e; do
        local out="$work/run-$model-$elm-$attn" extra=()
        [[ $elm == end2end ]] && extra=(--tokenizer "$in/tokenizer.json") || extra=(--encoder st-mem --encoder-preset base)
        python3 -m ecgbench.cli train "$elm" "${common[@]}" "${extra[@]}" --llm "$work/$model" \
          --attn-implementation "$attn" --out "$out" > "$out.log" 2>&1 || { echo "$model $elm $attn failed:"; tail -5 "$out.log"; continue; }
        python3 - "$out" "$model" "$elm" "$attn" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"train"' in l]
speed = statistics.median(r["tokens_per_s"] for r in rows[1:]) if len(rows) > 1 else rows[0]["tokens_per_s"]
print(f"{sys.argv[2]:<14} {sys.argv[3]:<13} {sys.argv[4]:<18} {speed:12.0f} {max(r.get('max_memory_gib', 0) for r in rows):9.2f}")
PY
      done
    done
  done
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) sed -n '2,8p' "$0"; exit 1 ;;
esac
