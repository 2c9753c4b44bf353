"""The image side of scripts/place_heads.py: at the answer position of held-out `vqa` position
questions on scenes of 2 shapes, how much each of nano_cogvlm's LM heads attends to the asked
shape's cell token and to the other shape's (read with image_first: <bos>, <boi>, 9 cell tokens in
cell order, <eoi>, then the text). The weights are recomputed from the same queries and keys as SDPA's.
usage: PYTHONPATH=. python scripts/cell_heads.py CKPT [N, default 1500]"""
import sys
import torch
import torch.nn.functional as F
import train
from data import Collator, get_sample
from data.world import analyse_image

model, tok, _ = train.load_model(sys.argv[1])
if not model.cfg.image_first:
    raise SystemExit("cell_heads.py reads the image right after <bos> (a checkpoint with image_first)")
col = train.phase_collator(model, tok, {})
maps, sdpa = [], F.scaled_dot_product_attention


def record(q, k, v, **kw):  # (B, H, T, hd) -> attention weights (B, H, T, T), causal (the default mask)
    w = (q @ k.transpose(-1, -2)) / q.size(-1) ** 0.5
    T = q.size(-2)
    maps.append(w.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1))
    return sdpa(q, k, v, **kw)


asked, other, n = 0, 0, 0
for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1500):
    s = get_sample("vqa", "test", i)
    objs = analyse_image(s["media"][0]["data"]) if s["kind"] == "position" else []
    if len(objs) != 2:
        continue
    prompt, _ = Collator.prompt(s)
    words = prompt["conversations"][-1]["value"].replace("?", " ").split()
    colour, shape = words[words.index("where") + 3: words.index("where") + 5]
    cell = {o.shape: o.cell for o in objs}  # a scene's shapes are all different
    b = col([prompt])
    maps.clear()
    F.scaled_dot_product_attention = record
    with torch.no_grad():
        model(b["tokens"], None, b["media"])
    F.scaled_dot_product_attention = sdpa
    lm = torch.stack(maps[-model.cfg.n_layer:])[:, 0, :, -1]  # the LM's layers (the ViT's come first): (L, H, T)
    mine, theirs = cell[shape], next(c for c in cell.values() if c != cell[shape])
    asked, other, n = asked + lm[:, :, 2 + mine], other + lm[:, :, 2 + theirs], n + 1
print(f"{n} position questions on 2 shapes; per layer, each head's attention on the asked cell / the other")
for layer in range(asked.size(0)):
    print(f"  layer {layer}: " + "  ".join(f"{a / n:.2f} / {o / n:.2f}" for a, o in zip(asked[layer], other[layer])))
print(f"summed over heads and layers: {asked.sum() / n:.2f} / {other.sum() / n:.2f}")
