#!/usr/bin/env bash
# Builds persona-kernels (the packed decoding kernels, a small crate without
# burn) for AArch64 and runs its tests (the NEON kernels against an f64
# product and the f32 panels) under qemu's user mode emulation. Installs what is missing: the target's standard library
# (rustup) and Debian's cross compiler and qemu-user (apt; CI runs as root).
# When the toolchain cannot be installed (no network to its registries), it
# says so on one line and exits 0: the NEON kernels are then untested here.
# A test that runs and fails exits non-zero.
set -euo pipefail

TARGET=aarch64-unknown-linux-gnu

skip() {
  echo "warning: NEON kernels not tested: $1" >&2
  exit 0
}

if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET" >&2 || skip "rustup target add $TARGET failed"
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
  { $sudo apt-get update -q && $sudo apt-get install -y -q \
      gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user; } >&2 \
    || skip "apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user failed"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
# The kernel-family tests: every family this (emulated) CPU runs.
cargo test --release --target "$TARGET" -p persona-kernels
