"""Which of nano_llava's attention heads look the asked-about object up? For held-out `vqa` questions of
one kind on scenes of 2-3 shapes, where <sep> (the answer position) attends most among the 9 image
tokens, per layer and head: the object the question names, another object, or an empty cell. Then the
wrong answers: whose attribute they name (objects numbered in cell order).
usage: PYTHONPATH=. python scripts/lookup_heads.py CKPT [KIND] [N]"""
import sys
from collections import Counter

import torch

import nano_llava as M
import train
from data import get_sample, world

model, tok, _ = train.load_model(sys.argv[1])
kind = sys.argv[2] if len(sys.argv) > 2 else "position"
n = int(sys.argv[3]) if len(sys.argv) > 3 else 800
col = train.phase_collator(model, tok, {})
last = {}


def keep_last_row(layer):  # the attention weights of the last position, recomputed as SDPA does
    def hook(attn, args, out):
        x, cos, sin = args[:3]
        B, T, C = x.shape
        q, k, _ = attn.qkv(x).view(B, T, 3, attn.n_head, C // attn.n_head).permute(2, 0, 3, 1, 4)
        q, k = M.apply_rope(q, cos, sin), M.apply_rope(k, cos, sin)
        last[layer] = (q[:, :, -1:] @ k.transpose(-1, -2) / (C // attn.n_head) ** 0.5).softmax(-1)[0, :, 0]  # (H, T)
    return hook


for i, block in enumerate(model.decoder.blocks):
    block.attn.register_forward_hook(keep_last_row(i))
heads, answers = {}, Counter()
for i in range(n):
    s = get_sample("vqa", "test", i)
    scene = world.analyse_image(s["media"][0]["data"])  # objects in cell order
    if s["kind"] != kind or len(scene) < 2:
        continue
    words = s["conversations"][0]["value"].replace("<image>", "").strip().rstrip("?").split()
    named = [j for j, o in enumerate(scene) if o.shape == words[-1] and (kind == "colour" or o.colour == words[-2])][0]
    prompt, truth = col.prompt(s)
    ids = torch.tensor([col.encode(prompt)[0]])
    slots = (ids[0] == model.cfg.image_id).nonzero()[:, 0]
    with torch.no_grad():
        model(ids, None, col.pack_media([prompt]))
        weights = dict(last)  # before generate's steps overwrite them
        reply = tok.decode(model.generate(ids, col.pack_media([prompt]), 4, 0.0)[0].tolist()).split("<eos>")[0].strip()
    for layer, w in weights.items():
        for h, cell in enumerate(w[:, slots].argmax(-1).tolist()):
            at = [j for j, o in enumerate(scene) if o.cell == cell]
            heads.setdefault((layer, h), Counter())["named" if at == [named] else "other object" if at else "empty"] += 1
    said = [j for j, o in enumerate(scene) if (world.POSITIONS[o.cell] if kind == "position" else getattr(o, kind)) == reply]
    answers["right" if reply == truth else f"{len(scene)} shapes: asked #{named}, answered #{said[0]}" if said
            else "names no object"] += 1
print(f"{kind} questions on 2-3 shapes: where <sep> attends most among the image tokens, per (layer, head)")
for key, c in sorted(heads.items()):
    total = sum(c.values())
    print(key, "  ".join(f"{k} {c[k] / total:.2f}" for k in ("named", "other object", "empty")))
print("answers:", dict(sorted(answers.items())))
