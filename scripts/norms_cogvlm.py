"""RMS of each decoder sublayer's input and output at text positions, at <bos> and at image positions (boi and
patches), over 32 test `vqa` samples: where the stream at the image positions grows, and by how much.
usage: PYTHONPATH=. python scripts/norms_cogvlm.py CKPT"""
import sys
import torch
import train
from data import Mixture
model, tok, ck = train.load_model(sys.argv[1])
M = sys.modules[type(model).__module__]
col = train.phase_collator(model, tok, {})
ds = Mixture({"vqa": 1.0}, "test", 32)
b = col([ds[j] for j in range(32)])
ids = b["tokens"]
with torch.no_grad():
    x, image, pos, mask = model.embed(ids, b["media"])
    route, dec = M.Route(image), model.decoder
    cos, sin = dec.cos[pos].unsqueeze(1), dec.sin[pos].unsqueeze(1)
    txt = ~image & (ids != tok.pad)
    for l, (blk, ex) in enumerate(zip(dec.blocks, model.expert)):
        a = blk.attn(blk.norm1(x), ex, route, cos, sin)
        m = route(blk.norm2(x + a), blk.mlp, ex.mlp)
        f = lambda t, s: t[s].pow(2).mean().sqrt().item()
        bos = ids == tok.bos
        print(l, "text x %.2f attn %.2f mlp %.2f | bos mlp %.2f | image x %.2f attn %.2f mlp %.2f" % (f(x, txt), f(a, txt), f(m, txt), f(m, bos), f(x, image), f(a, image), f(m, image)))
        x = x + a + m
