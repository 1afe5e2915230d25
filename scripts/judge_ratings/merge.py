#!/usr/bin/env python3
"""Joins hand ratings (`{"id", "trait", "coherence"}` per line, one file per
batch, same order as the batch) with the batches' key into the ratings
format `persona judge audit` and the classifier probe read:
`{"question", "answer", "trait", "coherence", "group", "source"}`.
Appends to (or creates) `--into`, refusing a batch whose ids differ.

    python3 scripts/judge_ratings/merge.py --key batches/sa.key.json \
        --ratings ratings/sa-*.jsonl --into datasets/judge/audit/sycophantic.jsonl
"""
import argparse, json, os


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--key", required=True)
    p.add_argument("--ratings", nargs="+", required=True)
    p.add_argument("--into", required=True)
    a = p.parse_args()
    key = json.load(open(a.key))
    out = []
    if os.path.exists(a.into):
        out = [json.loads(l) for l in open(a.into) if l.strip()]
    for f in a.ratings:
        batch = os.path.join(os.path.dirname(a.key), os.path.basename(f))
        ids = [json.loads(l)["id"] for l in open(batch)]
        got = [json.loads(l) for l in open(f) if l.strip()]
        if [g["id"] for g in got] != ids:
            raise SystemExit(f"{f}: ids differ from {batch}")
        for g in got:
            k = key[g["id"]]
            out.append({"question": k["question"], "answer": k["answer"], "trait": g["trait"],
                        "coherence": g["coherence"], "group": k["group"],
                        "source": f"SmolLM2-135M-Instruct, {k['condition']}, T=1"})
    out.sort(key=lambda r: (r["question"], r["group"], r["source"], r["answer"]))
    with open(a.into, "w") as fh:
        for r in out:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(a.into, len(out))


if __name__ == "__main__":
    main()
