"""Is an LM blind to size? The cosine of its embedding (and head) rows for word pairs, and its mean
probability of `small` and `large` on `read` size questions, by the true answer (docs/cogvlm.md r4, r5).
usage: PYTHONPATH=. python scripts/size_blind.py CKPT [N]   (N: read test samples scanned, default 300)"""
import os
import sys
import tempfile
import torch
import train
from data import Collator, get_sample
ck = torch.load(sys.argv[1], weights_only=True)
tied = "decoder.head.weight" not in ck["model"]
if tied:  # a checkpoint from before r4: its head was its embedding, so that is the head it computed with
    ck["model"]["decoder.head.weight"] = ck["model"]["decoder.emb.weight"]
    fd, path = tempfile.mkstemp(suffix=".pt")
    os.close(fd)
    torch.save(ck, path)
model, tok, _ = train.load_model(path if tied else sys.argv[1])
if tied:
    os.remove(path)
col = train.phase_collator(model, tok, {})
pairs = [("small", "large"), ("red", "yellow"), ("green", "purple"), ("white", "blue"), ("red", "blue")]
for name, rows in [("embedding", model.decoder.emb.weight)] + ([] if tied else [("head", model.decoder.head.weight)]):
    print(name, {f"{a}/{b}": round(torch.cosine_similarity(rows[tok.stoi[a]], rows[tok.stoi[b]], 0).item(), 3) for a, b in pairs})
p = {"small": [], "large": []}
for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 300):
    s = get_sample("read", "test", i)
    if "what size" in s["conversations"][0]["value"]:
        prompt, truth = Collator.prompt({**s, "conversations": s["conversations"][:2]})
        with torch.no_grad():
            probs = model(torch.tensor([col.encode(prompt)[0]]), media=col.pack_media([prompt]))[0][0, -1].softmax(-1)
        p[truth].append([probs[tok.stoi["small"]].item(), probs[tok.stoi["large"]].item()])
for truth, ps in p.items():
    print(f"truth {truth} ({len(ps)}): p(small) {sum(a for a, _ in ps) / len(ps):.3f}  p(large) {sum(b for _, b in ps) / len(ps):.3f}")
