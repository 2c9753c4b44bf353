"""Which of the frozen LM's heads find a place in words? nano_cogvlm's (or nano_flamingo's) LM reads
`read` test scenes of 2 shapes with a "where is ...?" question after the scene. Per layer and head:
(a) at the answer position, the attention on the asked shape's place words against the other shape's;
(b) at each place's first word, the attention on the token 3 back, its shape (a key that holds the
shape is what lets (a) pick the right place: an induction head's pattern, shifted); and the LM's
accuracy on these questions. The weights are recomputed from the same queries and keys as SDPA's.
usage: PYTHONPATH=. python scripts/place_heads.py CKPT [N, default 1500]"""
import re
import sys
import torch
import torch.nn.functional as F
import train
from data import Collator, get_sample

model, tok, _ = train.load_model(sys.argv[1])
col = train.phase_collator(model, tok, {})
samples = []
for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1500):
    s = get_sample("read", "test", i)
    first = s["conversations"][0]["value"]
    if first.count(" at the ") == 2 and first.endswith("?") and "where is" in first.split(".")[-1]:
        samples.append({**s, "conversations": s["conversations"][:2]})
prompts, truths = zip(*map(Collator.prompt, samples))
maps, sdpa = [], F.scaled_dot_product_attention


def record(q, k, v, **kw):  # (B, H, T, hd) -> attention weights (B, H, T, T), causal
    w = (q @ k.transpose(-1, -2)) / q.size(-1) ** 0.5
    T = q.size(-2)
    maps.append(w.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1))
    return sdpa(q, k, v, **kw)


batch = col(list(prompts))
F.scaled_dot_product_attention = record
with torch.no_grad():
    model(batch["tokens"])
F.scaled_dot_product_attention = sdpa
replies, _ = train.answer(model, col, list(prompts), 4, "cpu")
L, H = len(maps), maps[0].size(1)
right, other, back3, n_places = torch.zeros(L, H), torch.zeros(L, H), torch.zeros(L, H), 0
words = [tok.itos[i] for i in range(len(tok.itos))]
for b, p in enumerate(prompts):
    ids = batch["tokens"][b].tolist()
    end = max(i for i, t in enumerate(ids) if t != tok.pad)  # the answer position: the prompt's last token
    text = [words[t] for t in ids]
    asked = re.search(r"where is the \w+ (\w+)\?", p["conversations"][0]["value"]).group(1)
    starts = [i + 2 for i in range(len(text) - 2) if text[i] == "at" and text[i + 1] == "the"]  # first place word
    for s in starts:
        span = [s] + ([s + 1] if s + 1 < len(text) and text[s + 1] in ("left", "right") else [])
        mass = torch.stack([m[b, :, end, span].sum(-1) for m in maps])  # (L, H)
        if text[s - 3] == asked:
            right += mass
        else:
            other += mass
        back3 += torch.stack([m[b, :, s, s - 3] for m in maps])
        n_places += 1
n = len(prompts)
print(f"{n} questions on 2 shapes, answered {sum(r == t for r, t in zip(replies, truths)) / n:.2f}")
print("layer.head  answer position on the asked place / the other place   place word on its shape (3 back)")
for l in range(L):
    for h in range(H):
        print(f"  {l}.{h}      {right[l, h] / n:.2f} / {other[l, h] / n:.2f}"
              f"                                  {back3[l, h] / n_places:.2f}")
