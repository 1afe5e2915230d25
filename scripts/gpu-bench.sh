#!/usr/bin/env bash
# The GPU benchmark in one run, for GPU machines that have no network and
# take only a small copied build output.
#
#   scripts/gpu-bench.sh --build   # on a CPU machine: builds the bench with
#                                  # --features wgpu into target/gpu-bench/
#                                  # (stripped and xz-compressed: ~17 MB)
#   scripts/gpu-bench.sh           # on the GPU machine (carry target/gpu-bench)
#
# The run: synthetic Llama-3.2-1B and Llama-3.1-8B shapes (benches/shapes/,
# seeded random weights, nothing downloaded) on the wgpu device: prefill
# 8 x 128, decode batch 1 and 16, a LoRA r16 step on 4 x 256 tokens. For
# each it prints the bench's lines (tokens/s and GFLOP/s, with the fraction
# of GPU_PEAK_TFLOPS when set) and the peak GPU memory nvidia-smi saw.
# Frozen weights are f16 (GPU_BENCH_DTYPE=f32|f16 changes it): the
# products run in f16 with f32 accumulation, so compare with the card's
# dense f16 peak (GPU_PEAK_TFLOPS; H100 SXM: 989, the same as bf16). Not
# bf16: burn's wgpu device compiles WGSL, which has no bf16 type, and the
# model refuses bf16 weights there (bf16 needs the CUDA backend).
# GPU_BENCH_SHAPES (config paths) replaces the two shapes, and
# GPU_BENCH_ANY_VULKAN=1 skips the NVIDIA checks: for a smoke run of this
# script on any Vulkan device (lavapipe) with a tiny config.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/gpu-bench

if [ "${1:-}" = "--build" ]; then
  exe=$(cargo bench --bench runtime --features wgpu --no-run --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "runtime" and m.get("executable"):
        print(m["executable"])')
  mkdir -p "$out"
  tmp=$(mktemp -d)
  cp "$exe" "$tmp/runtime"
  strip "$tmp/runtime"
  xz -6 -T0 -c "$tmp/runtime" >"$out/runtime.xz"
  rm -rf "$tmp"
  ls -l "$out/runtime.xz"
  exit 0
fi

[ -f "$out/runtime.xz" ] || { echo "error: no $out/runtime.xz; run 'scripts/gpu-bench.sh --build' on a CPU machine and carry $out" >&2; exit 1; }
bin=$(mktemp -d)/runtime
xz -d -c "$out/runtime.xz" >"$bin"
chmod +x "$bin"
if [ -z "${GPU_BENCH_ANY_VULKAN:-}" ] \
  && ! compgen -G "/usr/share/vulkan/icd.d/nvidia*.json" >/dev/null \
  && ! compgen -G "/etc/vulkan/icd.d/nvidia*.json" >/dev/null; then
  echo "error: no NVIDIA Vulkan driver (nvidia_icd.json) on this machine; wgpu would not run on the GPU" >&2
  ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null >&2 || true
  exit 1
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
smi=$(command -v nvidia-smi || true)
[ -n "$smi" ] && "$smi" --query-gpu=name,memory.total,driver_version --format=csv,noheader
roof=""
if [ -n "${GPU_PEAK_TFLOPS:-}" ]; then
  roof=$(awk -v p="$GPU_PEAK_TFLOPS" 'BEGIN { if (p + 0 > 0) printf "%.0f", p * 1000 }')
  [ -n "$roof" ] || { echo "error: GPU_PEAK_TFLOPS=$GPU_PEAK_TFLOPS is not a positive number" >&2; exit 1; }
fi
shapes=${GPU_BENCH_SHAPES:-benches/shapes/llama-3.2-1b-instruct.json benches/shapes/llama-3.1-8b-instruct.json}
for shape in $shapes; do
  for part in prefill decode1 decode16 train; do
    log=$(mktemp)
    sampler=""
    if [ -n "$smi" ]; then
      "$smi" --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$log" &
      sampler=$!
    fi
    env BENCH_DEVICE=wgpu BENCH_DTYPE="${GPU_BENCH_DTYPE:-f16}" BENCH_MODEL="synthetic:$shape" BENCH_TRAIN=4x256 \
      BENCH_ONLY=$part ${roof:+BENCH_ROOF_GFLOPS=$roof} "$bin" \
      | grep -E "^(model|prefill|decode|  weights|train|peak)" || echo "$shape $part: failed"
    if [ -n "$sampler" ]; then
      kill "$sampler" 2>/dev/null || true
      echo "  $shape $part: peak GPU memory $(sort -n "$log" | tail -1 | grep . || echo '?') MiB"
    fi
    rm -f "$log"
  done
done
