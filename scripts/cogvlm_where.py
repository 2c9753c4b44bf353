"""How much of a CogVLM image token is its place? On 1500 single-object images, the fraction of the
variance of the object's own cell token (the ViT's merged patch, the adapter's output) that the
object's cell explains, against its (colour, shape); and of all 9 tokens read as one vector, where
the place is which token holds the object (flamingo_where.py asks the same of Flamingo's latents).
usage: PYTHONPATH=. python scripts/cogvlm_where.py CKPT"""
import sys

import torch

import train
from scripts.linear_probe import one_object_images, share

torch.set_num_threads(2)
model, tok, ck = train.load_model(sys.argv[1])
imgs, cell, obj = one_object_images(1500)
with torch.no_grad():
    vit = model.patches(model.encoder(imgs))  # (N, 9, D)
    a = model.adapter
    out = a.norm(a.glu(a.inp(vit)))  # (N, 9, C): the image tokens the decoder reads
own = torch.arange(len(cell)), cell
for name, f in (("ViT, the object's token", vit[own]), ("adapter, the object's token", out[own]),
                ("adapter, all 9 tokens", out.flatten(1))):
    print(f"{name:28s} variance explained: cell {share(f, cell):.3f}, object {share(f, obj):.3f}")
