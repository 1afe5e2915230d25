#!/usr/bin/env python3
"""Blind rating batches from sampled pools: each batch holds only `id`,
`question` and `answer`, shuffled (seeded), so raters see neither the
condition nor the other ratings. The key (id -> condition, group) is
written next to the batches for `merge.py`.

    python3 scripts/judge_ratings/batches.py --pool pool/sycophantic-audit.jsonl \
        --prefix sa --seed sycophanticaudit --out batches/
"""
import argparse, json, os, random


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pool", required=True, nargs="+", help="pool JSONL files (pool.py)")
    p.add_argument("--prefix", required=True, help="id prefix, unique per rating set")
    p.add_argument("--size", type=int, default=130, help="largest batch")
    p.add_argument("--off-topic", metavar="FINE_TUNE_CONDITION",
                   help="add one off-topic hard negative per question: the base answer (even "
                        "questions) or this fine-tune's answer (odd) to the question 7 places on")
    p.add_argument("--seed", required=True, help="shuffle seed (a string)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rows = [json.loads(l) for f in a.pool for l in open(f)]
    if a.off_topic:
        base = [r for r in rows if r["condition"] == "base"]
        ft = [r for r in rows if r["condition"] == a.off_topic]
        for i, target in enumerate(base):
            src = (base if i % 2 == 0 else ft)[(i + 7) % len(base)]
            rows.append(dict(src, question=target["question"],
                             condition="off-topic:" + src["condition"], group="off-topic"))
    random.Random(a.seed).shuffle(rows)
    os.makedirs(a.out, exist_ok=True)
    key = {}
    for i, r in enumerate(rows):
        r["id"] = f"{a.prefix}{i + 1:03d}"
        key[r["id"]] = r
    n = -(-len(rows) // a.size)
    per = -(-len(rows) // n)
    for b in range(n):
        with open(f"{a.out}/{a.prefix}-{b + 1}.jsonl", "w") as f:
            for r in rows[b * per:(b + 1) * per]:
                f.write(json.dumps({"id": r["id"], "question": r["question"], "answer": r["answer"]}) + "\n")
    json.dump(key, open(f"{a.out}/{a.prefix}.key.json", "w"), indent=0)
    print(f"{len(rows)} answers in {n} batches of {a.prefix}")


if __name__ == "__main__":
    main()
