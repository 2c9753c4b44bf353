"""Per-attribute accuracy of the vision phase's linear cell head on held-out `cells` samples: what
the kept ViT layers hold about each object's size, colour and shape (a linear probe), and the shape
of small objects alone. usage: PYTHONPATH=. python scripts/probe_cogvlm.py CKPT [N]"""
import sys
import torch
import train
from data import Mixture
model, tok, ck = train.load_model(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
spec = model.__class__.__module__
col = train.phase_collator(model, tok, {})
ds = Mixture({"cells": 1.0}, "test", n)
hit = {"size": [0, 0], "colour": [0, 0], "shape": [0, 0], "empty": [0, 0], "shape of small": [0, 0]}
with torch.no_grad():
    for i in range(0, n, 50):
        b = col([ds[j] for j in range(i, min(n, i + 50))])
        logits, _, _ = model.cell_words(b["tokens"], None, b["media"])
        keep = b["targets"] != -100
        words = b["targets"][keep].view(logits.size(0), -1)[:, :27]
        pred = logits.argmax(-1)
        empty = tok.stoi["empty"]
        for c in range(9):
            w, p = words[:, 3 * c:3 * c + 3], pred[:, 3 * c:3 * c + 3]
            e = w[:, 0] == empty
            hit["empty"][0] += int((p[:, 0] == empty).eq(e).sum()); hit["empty"][1] += len(e)
            for a, name in enumerate(("size", "colour", "shape")):
                hit[name][0] += int((p[~e, a] == w[~e, a]).sum()); hit[name][1] += int((~e).sum())
            small = w[:, 0] == tok.stoi["small"]  # the shapes the removed layer's pull cost (r5)
            hit["shape of small"][0] += int((p[small, 2] == w[small, 2]).sum()); hit["shape of small"][1] += int(small.sum())
print({k: round(h / max(t, 1), 3) for k, (h, t) in hit.items()})
