"""Where is position (and size) lost? Linear probes on a Flamingo checkpoint's frozen features of
single-object images: the ViT's 36 patch features (+ space_emb, as the Resampler reads them) and
the Resampler's latents, each flattened and mean-pooled, predict the object's cell (9-way) and size (2-way).
Then, per latent, the cell from that latent alone and from the last gated layer's values of it, and
the singular values of each gated layer's value projection.
usage: PYTHONPATH=. python scripts/flamingo_probe.py CKPT [N_TRAIN]"""
import sys

import numpy as np
import torch

import train
from scripts.linear_probe import probe
from data import world

torch.set_num_threads(1)
model, tok, ck = train.load_model(sys.argv[1])
n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
rng = np.random.default_rng(0)
imgs, cell, size = [], [], []
for _ in range(n_train + 500):
    scene = world.sample_scene(rng, max_objects=1)
    imgs.append(torch.from_numpy(world.render_scene(scene, rng)).permute(2, 0, 1).float() / 255)
    cell.append(scene[0].cell), size.append(world.SIZES.index(scene[0].size))
imgs, cell, size = torch.stack(imgs), torch.tensor(cell), torch.tensor(size)
feats = {"vit": [], "resampler": [], "vit mean": [], "resampler mean": []}
with torch.no_grad():
    for j in range(0, len(imgs), 100):
        x = model.encoder(imgs[j:j + 100])  # (n, 36, D)
        feats["vit"].append(x.flatten(1))
        lat = model.resampler(x[:, None])  # (n, L, D)
        feats["resampler"].append(lat.flatten(1))  # (n, L*D)
        # what one uniform cross-attention read would see: the mean over tokens
        feats["vit mean"].append(x.mean(1)), feats["resampler mean"].append(lat.mean(1))
fit = torch.arange(len(imgs)) < n_train
for name, f in feats.items():
    for target, y, k in (("cell", cell, 9), ("size", size, 2)):
        acc, _, loss = probe(torch.cat(f), y, fit, k)
        print(f"{name:10s} {target:5s} held-out probe accuracy {acc:.3f} (train loss {loss:.3f})")


def cell_probe(f):  # held-out accuracy of the cell from one set of features
    return round(probe(f, cell, fit, 9, steps=200)[0], 2)


lat = torch.cat(feats["resampler"]).view(len(imgs), model.cfg.n_latents, -1)  # (n, L, D)
with torch.no_grad():
    v = model.xattn[-1].keys_values(lat)[1]  # (n, H, L, hd): what the last gated layer reads
print("cell from one latent, per latent:", [cell_probe(lat[:, i]) for i in range(lat.size(1))])
print("cell from the last gated layer's values of one latent:", [cell_probe(v[:, :, i].flatten(1)) for i in range(lat.size(1))])
for j, g in enumerate(model.xattn):
    sv = torch.linalg.svdvals(g.kv.weight[model.cfg.n_embd:].detach())
    print(f"gated layer {j} value projection singular values: max {sv[0]:.2f} median {sv[len(sv) // 2]:.2f}")
