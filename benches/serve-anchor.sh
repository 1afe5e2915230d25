#!/usr/bin/env bash
# The anchor of `persona serve`'s load bench: llama.cpp's OpenAI-compatible
# server (llama-cpp-python) on the same Q4_1 GGUF and thread count, loaded
# by the same client code (benches/serve.rs with BENCH_SERVE_URL; only the
# unsteered mix). Installs `llama-cpp-python[server]` into
# target/llama-venv when missing (it compiles llama.cpp: ~15 min on 2 cores).
# Usage: benches/serve-anchor.sh   (then `just bench-serve` for persona's side)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${LLAMA_VENV:-target/llama-venv}
if ! "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "llama-cpp-python[server]"
fi
gguf=$(ls "${PERSONA_HOME:-checkpoints}"/models/smollm2-135m-instruct/*.gguf | head -n 1)
threads=${RAYON_NUM_THREADS:-$(nproc)}
port=${ANCHOR_PORT:-18123}
"$venv/bin/python" -m llama_cpp.server --model "$gguf" --n_threads "$threads" \
  --n_ctx 2048 --port "$port" --chat_format chatml >/tmp/llama-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat /tmp/llama-server.log >&2; exit 1; }
  sleep 0.2
done
echo "llama-cpp-python $("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)'), $threads threads, $gguf"
BENCH_SERVE_URL="http://127.0.0.1:$port" cargo bench --bench serve
