#!/usr/bin/env bash
# `persona serve` driven by the official `openai` Python client (installed
# into target/openai-venv from PyPI when missing) and by curl (the SSE
# framing): tests/serve_openai.py. Usage: scripts/test-serve-openai.sh [cargo flags...]
# (the flags select the build to test, e.g. --features wgpu as `just test` does).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/openai-venv
if ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  echo "installing the openai client into $venv ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openai>=1.40,<3"
fi
command -v curl >/dev/null || { echo "error: curl is missing (apt-get install curl)" >&2; exit 1; }

cargo build --release --quiet "$@"
persona=target/release/persona
work=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/vectors"
"$persona" extract --trait datasets/traits/sycophantic.toml --no-select \
  --out "$work/vectors/sycophantic.safetensors" >/dev/null
"$persona" serve --port 0 --vectors "$work/vectors" 2>"$work/log" &
server=$!
for _ in $(seq 300); do
  grep -q "listening on" "$work/log" && break
  kill -0 "$server" 2>/dev/null || { cat "$work/log" >&2; exit 1; }
  sleep 0.1
done
base=$(grep -o "listening on http://[0-9.:]*" "$work/log" | cut -d' ' -f3)
[ -n "$base" ] || { echo "error: the server did not start" >&2; cat "$work/log" >&2; exit 1; }

# SSE framing as curl sees it: `data: <json>` events, blank lines between,
# `data: [DONE]` last.
curl -sN "$base/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "smollm2-135m-instruct", "stream": true, "max_tokens": 8, "temperature": 0,
       "messages": [{"role": "user", "content": "Hi!"}]}' >"$work/sse"
awk 'NR % 2 == 1 && !/^data: / { print "bad event line " NR ": " $0; bad = 1 }
     NR % 2 == 0 && $0 != ""    { print "no blank line at " NR; bad = 1 }
     END { exit bad }' "$work/sse"
[ "$(grep -v '^$' "$work/sse" | tail -n 1)" = "data: [DONE]" ] || { echo "the stream does not end with [DONE]" >&2; exit 1; }

"$venv/bin/python" tests/serve_openai.py "$base/v1"

# SIGTERM: a clean exit.
kill -TERM "$server"
wait "$server"
server=
echo "serve_openai: ok"
