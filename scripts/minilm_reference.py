#!/usr/bin/env python3
"""Reference sentence embeddings of all-MiniLM-L6-v2, computed with numpy only.

Used once to produce the numbers that `crates/persona-judge/tests/encoder.rs`
checks the burn encoder against (a plain HF BertModel forward in float64,
mean pooling over the attention mask, L2 normalisation, as the package's
`1_Pooling/config.json` says). Token ids are given directly so no tokenizer
library is needed:

    python3 scripts/minilm_reference.py checkpoints/models/all-minilm-l6-v2/model.safetensors
"""
import json
import math
import struct
import sys

import numpy as np

# "hello world" and "the cat sat on the mat." in the model's uncased WordPiece vocabulary.
INPUTS = [
    [101, 7592, 2088, 102],
    [101, 1996, 4937, 2938, 2006, 1996, 13523, 1012, 102],
]


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        blob = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(blob[a:b], dtype=np.float32).reshape(meta["shape"]).astype(np.float64)
    return out


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def embed(w, ids, heads=12):
    n = len(ids)
    e = "embeddings."
    h = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][:n] + w[e + "token_type_embeddings.weight"][0]
    h = layer_norm(h, w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"])
    d = h.shape[1]
    hd = d // heads
    for l in range(6):
        p = f"encoder.layer.{l}."
        lin = lambda x, m: x @ w[p + m + ".weight"].T + w[p + m + ".bias"]
        q = lin(h, "attention.self.query").reshape(n, heads, hd).transpose(1, 0, 2)
        k = lin(h, "attention.self.key").reshape(n, heads, hd).transpose(1, 0, 2)
        v = lin(h, "attention.self.value").reshape(n, heads, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, d)
        h = layer_norm(lin(a, "attention.output.dense") + h, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        f = lin(gelu(lin(h, "intermediate.dense")), "output.dense")
        h = layer_norm(f + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    m = h.mean(0)
    return m / np.linalg.norm(m)


def main():
    w = load(sys.argv[1])
    embs = [embed(w, ids) for ids in INPUTS]
    for ids, e in zip(INPUTS, embs):
        print(json.dumps({"ids": ids, "first8": [round(float(x), 6) for x in e[:8]]}))
    print(json.dumps({"cosine": round(float(embs[0] @ embs[1]), 6)}))


if __name__ == "__main__":
    main()
