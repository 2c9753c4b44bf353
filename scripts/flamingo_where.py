"""Does a Flamingo checkpoint know where a single object is, and where is its place lost?
1. Its answers to the position questions of 600 `vqa_one` samples (train and test split): accuracy,
   the first word (the row) right, and the commonest replies.
2. On 1500 single-object images, how much of the variance of each stage's output the object's cell
   explains, against its (colour, shape): the ViT's mean patch, the Resampler's latents, each gated
   layer's values (mean over latents). A stage that carries the place at a few percent of its
   variance gives the read-out little to learn from.
3. Each Resampler layer's attention weight on the 4 patches of the object's cell (4/52 = 0.077 if
   uniform over the 36 patches and 16 latents).
With `push`: how large a vector, one per cell, added to the residual stream after gated layer K at
the answer positions must be for the frozen LM to say the place (the read-out's target), against
the residual's norm there and what the gated layer adds.
usage: PYTHONPATH=. python scripts/flamingo_where.py CKPT [push]"""
import collections
import sys

import numpy as np
import torch
import torch.nn.functional as F

import train
from data import Collator, get_sample, world
from scripts.linear_probe import one_object_images, share

torch.set_num_threads(2)
model, tok, ck = train.load_model(sys.argv[1])
col = train.phase_collator(model, tok, {})
for split in ("train", "test"):
    qs = [s for s in (get_sample("vqa_one", split, i) for i in range(600)) if s["kind"] == "position"]
    prompts, truths = zip(*map(Collator.prompt, qs))
    replies, _ = train.answer(model, col, prompts, 4, "cpu")
    right = np.mean([r == t for r, t in zip(replies, truths)])
    row = np.mean([r.split()[:1] == t.split()[:1] for r, t in zip(replies, truths)])
    print(f"{split}: position on one object {right:.3f}, first word right {row:.3f} ({len(qs)} questions); "
          f"replies {collections.Counter(replies).most_common(4)}")

imgs, cell, obj = one_object_images(1500)
r = model.resampler
with torch.no_grad():
    x = model.encoder(imgs)  # (N, 36, D)
    lat = r(x[:, None])  # (N, L, D)
    stages = {"ViT, mean patch": x.mean(1), "Resampler latents": lat.flatten(1)}
    for i, g in enumerate(model.xattn):
        stages[f"gated layer {i} values"] = g.keys_values(lat)[1].transpose(1, 2).flatten(2).mean(1)
    for name, f in stages.items():
        print(f"{name:22s} variance explained: cell {share(f, cell):.3f}, object {share(f, obj):.3f}")
    # the Resampler's attention, recomputed as its forward does it
    P, (N, L, D) = x.size(1), lat.shape
    H, hd = r.n_head, D // r.n_head
    g = int(P ** 0.5)
    patch_cell = torch.arange(P) // g // (g // 3) * 3 + torch.arange(P) % g // (g // 3)  # (P,) patch -> cell
    on_obj = (patch_cell[None] == cell[:, None]).float()  # (N, P)
    feats = (x + r.time_emb[0] + (r.space_emb if r.space_emb is not None else 0))
    h = r.latents.expand(N, -1, -1)
    where = 0 if r.where is None else F.pad(r.where, (0, 0, 0, L)).view(-1, H, hd).transpose(0, 1)
    for i, layer in enumerate(r.layers):
        q = layer["q"](layer["norm_q"](h)).view(N, L, H, hd).transpose(1, 2)
        k, v = layer["kv"](torch.cat([layer["norm_x"](feats), layer["norm_q"](h)], 1)).view(N, P + L, 2, H, hd).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-1, -2) / hd ** 0.5).softmax(-1)  # (N, H, L, P + L)
        w = (a[..., :P] * on_obj[:, None, None]).sum(-1)  # (N, H, L)
        print(f"Resampler layer {i}: weight on the object's cell, mean {float(w.mean()):.3f}, "
              f"best latent and head {float(w.flatten(1).max(1).values.mean()):.3f}")
        h = h + layer["out"]((a @ (v + where)).transpose(1, 2).reshape(N, L, D))
        h = h + layer["ffw"](h)

if sys.argv[2:] == ["push"]:
    qs = [s for s in (get_sample("vqa_one", "train", i) for i in range(1500)) if s["kind"] == "position"][:200]
    b = col(qs)
    tokens, targets, media = b["tokens"], b["targets"], b["media"]
    ans = targets != -100  # (B, T): the answer's positions
    cells = torch.tensor([world.POSITIONS.index(s["conversations"][-1]["value"]) for s in qs])
    for p in model.parameters():
        p.requires_grad = False
    with torch.no_grad():
        visual, phi = model.visual(tokens, media)
        mask, seen = model.media_mask(phi, visual.size(1))
        kvs = [g.keys_values(visual.flatten(1, 2)) for g in model.xattn]
    dec = model.decoder
    cos, sin = dec.rope(0, tokens.size(1))
    for K in range(len(model.xattn)):
        push = torch.zeros(9, model.cfg.n_embd, requires_grad=True)
        opt = torch.optim.Adam([push], lr=0.05)
        for step in range(101):
            y = model.embed(tokens)
            for i, block in enumerate(dec.blocks):
                before = y
                y = model.xattn[i](y, kvs[i], mask, seen)
                if i == K:
                    norm, added = (float(t.detach()[ans].norm(dim=-1).mean()) for t in (before, y - before))
                    y = y + ans[..., None] * push[cells][:, None]
                y = block(y, cos, sin)
            logits = dec.head(y)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
            opt.zero_grad(), loss.backward(), opt.step()
        rows = ((logits.argmax(-1) == targets) | ~ans).all(1).float().mean()
        print(f"push after gated layer {K}: norm {float(push.detach().norm(dim=-1).mean()):.1f} makes {float(rows):.2f} of the "
              f"answers right; residual norm there {norm:.1f}, the gated layer adds {added:.1f}")
