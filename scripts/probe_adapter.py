"""Linear probes (fit on train scenes, scored on test scenes) of each occupied cell's colour, size and
shape, read from three places: the merged ViT tokens (what the adapter reads), the adapter's output
(what the LM gets), and the residual stream at the patch positions after each decoder layer.
usage: PYTHONPATH=. python scripts/probe_adapter.py CKPT [N]"""
import sys
import torch
import torch.nn.functional as F
import train
from data import Mixture
from data.world import COLOURS, SHAPES, SIZES
model, tok, ck = train.load_model(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
col = train.phase_collator(model, tok, {})
names = {"size": list(SIZES), "colour": list(COLOURS), "shape": list(SHAPES)}


@torch.no_grad()
def collect(split):
    ds, feats, labels = Mixture({"cells": 1.0}, split, n), {}, {a: [] for a in names}
    for i in range(0, n, 100):
        b = col([ds[j] for j in range(i, min(n, i + 100))])
        imgs = b["media"]["image"]
        vit = model.patches(model.encoder(imgs))
        a = model.adapter
        ad = a.norm(a.glu(a.inp(vit)))
        # the residual stream at the 9 patch positions of "<image>" alone
        ids = torch.tensor([tok.bos] + [tok.image] * model.media_tokens["image"]).expand(len(imgs), -1)
        x, image, pos, mask = model.embed(ids, {"image": imgs})
        route, dec = sys.modules[type(model).__module__].Route(image), model.decoder
        cos, sin = dec.cos[pos].unsqueeze(1), dec.sin[pos].unsqueeze(1)
        outs = {"vit": vit, "adapter": ad}
        for l, (blk, ex) in enumerate(zip(dec.blocks, model.expert)):
            x = blk(x, ex, route, cos, sin)
            outs[f"layer{l}"] = x[:, 2:11]
        keep = b["targets"] != -100
        words = b["targets"][keep].view(len(imgs), -1)[:, :27].view(len(imgs), 9, 3)
        occ = words[:, :, 0] != tok.stoi["empty"]
        for k, v in outs.items():
            feats.setdefault(k, []).append(v[occ])
        for j, a_ in enumerate(names):
            labels[a_].append(torch.tensor([names[a_].index(tok.itos[int(w)]) for w in words[occ][:, j]]))
    return {k: torch.cat(v) for k, v in feats.items()}, {k: torch.cat(v) for k, v in labels.items()}


tr, te = collect("train"), collect("test")
for place in tr[0]:
    xtr, xte = tr[0][place], te[0][place]
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-5
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    res = {}
    for a in names:
        w = torch.zeros(xtr.size(1), len(names[a]), requires_grad=True)
        bias = torch.zeros(len(names[a]), requires_grad=True)
        opt = torch.optim.Adam([w, bias], lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            F.cross_entropy(xtr @ w + bias, tr[1][a]).backward()
            opt.step()
        res[a] = round(float(((xte @ w + bias).argmax(1) == te[1][a]).float().mean()), 3)
    print(place, res)
