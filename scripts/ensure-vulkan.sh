#!/usr/bin/env bash
# Makes sure a Vulkan driver is installed for the wgpu tests: when the
# machine has no Vulkan ICD at all, installs Debian's mesa-vulkan-drivers,
# whose lavapipe runs Vulkan compute on the CPU (apt; CI runs as root).
# A machine with a GPU driver keeps it; the tests then run on that GPU.
set -euo pipefail

have_icd() {
  compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null \
    || compgen -G "/etc/vulkan/icd.d/*.json" >/dev/null
}

if have_icd; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
echo "installing mesa-vulkan-drivers (lavapipe: Vulkan on the CPU) for the wgpu tests ..." >&2
if ! { $sudo apt-get update -q && $sudo apt-get install -y -q mesa-vulkan-drivers; } >&2 \
  || ! have_icd; then
  echo "error: no Vulkan driver, and 'apt-get install mesa-vulkan-drivers' failed; install a Vulkan driver (Debian/Ubuntu: mesa-vulkan-drivers) and run 'just test' again" >&2
  exit 1
fi
