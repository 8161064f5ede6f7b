#!/usr/bin/env bash
# The GPU checks of training (#5) and of the seed scenario's GPU leg (#7), in one run:
#   1. tests/test_cuda.py (parity with transformers on CUDA, bf16 autocast, resume, compile,
#      the chunked loss's peak memory; NCCL when two GPUs are visible);
#   2. benches/bench_train.py at hidden 896 / 4 layers / seq 1024 against transformers;
#   3. a Qwen2.5-0.5B-shaped checkpoint (config of the real model, random bf16 weights, made
#      by transformers with the Qwen2 tokenizer.json beside it) fine-tuned 500 steps by
#      examples/qwen_finetune_scenario.py at seq 1024 x batch 8.
#
#   bash benches/cuda_check.sh OUT_DIR QWEN2_TOKENIZER_JSON
#
# Each step has a time limit in seconds (TESTS_S, BENCH_S, SCENARIO_S; defaults 200, 240,
# 250), so that a short lease still gets the first steps' results.
# aprx must be importable (an installed wheel or `maturin develop`). Logs, reports and the
# loss plot land in OUT_DIR.
set -u
out=${1:?OUT_DIR}; tok=${2:?QWEN2_TOKENIZER_JSON}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c 'import torch, aprx; print("torch", torch.__version__, "aprx", aprx.__version__)' \
  | tee -a "$out/gpu.txt"

echo "== 1. tests/test_cuda.py"
SECONDS=0
timeout "${TESTS_S:-200}" python3 -m pytest -q -rs -s -p no:cacheprovider tests/test_cuda.py 2>&1 \
  | tee "$out/test_cuda.log" | grep -E "peak extra|passed|failed|error|SKIP" ; echo "   ${SECONDS}s"

echo "== 2. bench_train on cuda"
timeout "${BENCH_S:-240}" python3 benches/bench_train.py --device cuda --hidden 896 --ffn 4864 --heads 14 \
  --kv-heads 2 --layers 4 --seq-len 1024 --batch 8 --steps 6 --threads 8 2>&1 \
  | tee "$out/bench_train.log" | tail -n 12

echo "== 3. scenario, Qwen2.5-0.5B shape, 500 steps on cuda"
SECONDS=0
ck=/tmp/qwen2.5-0.5b-random
python3 - "$ck" "$tok" <<'PY'
import shutil, sys, torch, transformers
ck, tok = sys.argv[1], sys.argv[2]
cfg = transformers.Qwen2Config(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
torch.manual_seed(0)
model = transformers.Qwen2ForCausalLM(cfg).to(torch.bfloat16)  # stored like the real one
model.save_pretrained(ck, safe_serialization=True)
shutil.copy(tok, f"{ck}/tokenizer.json")
print("checkpoint", ck, sum(p.numel() for p in model.parameters()), "parameters")
PY
timeout "${SCENARIO_S:-250}" python3 examples/qwen_finetune_scenario.py --work /tmp/scenario --init "$ck" \
  --tokenizer-json "$tok" --device cuda --seq-len 1024 --batch-size 8 --lr 3e-4 \
  > "$out/scenario.log" 2>&1
echo "   exit $? in ${SECONDS}s"; tail -n 25 "$out/scenario.log"
cp /tmp/scenario/run/report.json "$out/scenario-report.json" 2>/dev/null
cp /tmp/scenario/run/loss.png "$out/scenario-loss.png" 2>/dev/null

