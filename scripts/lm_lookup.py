"""How a frozen LM looks up a place in words. On `read` test questions "where is the C S?" about
scenes of 2-3 shapes, per layer and head of the LM:
  bind   at each place word of the description ("... circle at the TOP left"), the attention on its
         own object's shape word against the other objects' (the place word must know whose it is)
  find   at the answer position, how often the attention peaks on the asked object's place word,
         among all the place words (chance: 1/2-1/3), for the questions answered right | wrong
usage: PYTHONPATH=. python scripts/lm_lookup.py CKPT [N]"""
import sys
from collections import Counter, defaultdict

import torch

import nano_cogvlm as M
import train
from data import get_sample, world

probs = {}


def forward(self, x, expert, route, cos, sin, cache=None, start=0, mask=None):
    """Attention.forward with the softmax written out, so that its probabilities can be kept."""
    B, T, C = x.shape
    q, k, v = route(x, self.qkv, expert.qkv).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
    q, k = M.apply_rope(q, cos, sin), M.apply_rope(k, cos, sin)
    s = (q @ k.transpose(-1, -2) / q.size(-1) ** 0.5).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -torch.inf)
    probs[self] = p = s.softmax(-1)  # (B, H, T, T)
    return route((p @ v).transpose(1, 2).reshape(B, T, C), self.proj, expert.proj)


M.Attention.forward = forward
model, tok, _ = train.load_model(sys.argv[1])
model.eval()
col = train.phase_collator(model, tok, {})
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
attns = [b.attn for b in model.decoder.blocks]
own, other, asked = defaultdict(float), defaultdict(float), defaultdict(Counter)
right, count = Counter(), 0
for i in range(n):
    s = get_sample("read", "test", i)
    if "where is" not in s["conversations"][0]["value"]:
        continue
    p, truth = col.prompt({**s, "conversations": s["conversations"][:2]})
    ids = col.encode(p)[0]
    words = [tok.decode([t]).strip() for t in ids]
    q = words.index("where")
    shapes = [j for j, w in enumerate(words) if w in world.SHAPES and not q <= j <= q + 4]  # the description's
    if len(shapes) < 2:
        continue
    places = [j + 3 for j in shapes]  # "S at the P"
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model.decoder(model.decoder.emb(x), torch.arange(len(ids))[None], model.expert, M.Route(x < 0))
    ok = tok.decode([int(logits[0, -1].argmax())]).strip() == truth.split()[0]
    right[ok] += 1
    count += 1
    target = [k for k, j in enumerate(shapes) if words[j] == words[q + 4]][0]
    for l, a in enumerate(attns):
        for h in range(a.n_head):
            A = probs[a][0, h]
            for k, (sj, pj) in enumerate(zip(shapes, places)):
                own[l, h] += float(A[pj, sj]) / len(shapes)
                other[l, h] += float(sum(A[pj, o] for o in shapes if o != sj and o < pj)) / len(shapes)
            asked[ok, l, h][int(A[-1, places].argmax()) == target] += 1
print(f"{count} questions on 2-3 shapes, answered right {right[True]}, wrong {right[False]}")
print("bind: attention of a place word on its own object's shape word / on the others'")
for l, a in enumerate(attns):
    print(f"  layer {l}", "  ".join(f"h{h} {own[l, h] / count:.2f}/{other[l, h] / count:.2f}" for h in range(a.n_head)))
print("find: the answer position's attention peaks on the asked object's place word (right | wrong answers)")
for l, a in enumerate(attns):
    frac = lambda c: f"{c[True] / max(1, c[True] + c[False]):.2f}" if c else "  - "
    print(f"  layer {l}", "  ".join(f"h{h} {frac(asked[True, l, h])}|{frac(asked[False, l, h])}" for h in range(a.n_head)))
