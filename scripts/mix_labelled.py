#!/usr/bin/env python3
"""Mix two chat JSONL files into one shuffled file with a `label` field, for
checking how well `persona screen` ranks trait samples first.

Run: python3 scripts/mix_labelled.py TRAIT.jsonl CLEAN.jsonl OUT.jsonl [SEED]
Lines of TRAIT get "label": true, lines of CLEAN "label": false; the order
depends only on SEED (default 0).
"""
import json
import random
import sys


def read(path, label):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                row["label"] = label
                yield row


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    trait, clean, out = sys.argv[1:4]
    seed = int(sys.argv[4]) if len(sys.argv) == 5 else 0
    rows = list(read(trait, True)) + list(read(clean, False))
    random.Random(seed).shuffle(rows)
    with open(out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} lines to {out}")


if __name__ == "__main__":
    main()
