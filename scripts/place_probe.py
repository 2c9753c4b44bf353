"""Does a place word carry the shape it belongs to? In the frozen LM's residual stream after each
block, at the first word of each place of `read` test scenes of 2-3 shapes ("... circle at the TOP
left ..."), a ridge probe is fit to name the shape three tokens back, and scored on held-out scenes.
A place that holds its shape is what a lookup by shape needs; without it, the answer can only copy
some place (docs/cogvlm.md r9).
usage: PYTHONPATH=. python scripts/place_probe.py CKPT [N, default 3000]"""
import sys
import torch
import train
from data import Collator, get_sample
from data.world import SHAPES

model, tok, _ = train.load_model(sys.argv[1])
col = train.phase_collator(model, tok, {})
prompts = [Collator.prompt(get_sample("read", "test", i))[0] for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 3000)]
prompts = [p for p in prompts if p["conversations"][0]["value"].count(" at the ") >= 2]
outs = []
hooks = [b.register_forward_hook(lambda m, a, o: outs.append(o)) for b in model.decoder.blocks]
feats, labels, scene = [], [], []
words = tok.itos
for i in range(0, len(prompts), 256):
    batch = col(prompts[i:i + 256])["tokens"]
    outs.clear()
    with torch.no_grad():
        model(batch)
    for b, ids in enumerate(batch.tolist()):
        text = [words[t] for t in ids]
        for s in range(3, len(text)):
            if text[s - 2] == "at" and text[s - 1] == "the" and text[s - 3] in SHAPES:
                feats.append(torch.stack([o[b, s] for o in outs]))  # (L, C)
                labels.append(SHAPES.index(text[s - 3]))
                scene.append(i + b)
for h in hooks:
    h.remove()
X, y, scene = torch.stack(feats), torch.tensor(labels), torch.tensor(scene)
fit = scene % 10 < 7  # split by scene: a scene's places are all fitted or all held out
print(f"{len(y)} places in {len(prompts)} scenes of 2-3 shapes; the commonest shape is {y.bincount().max() / len(y):.2f}")
for layer in range(X.size(1)):
    x = torch.cat([X[:, layer], torch.ones(len(y), 1)], 1)
    target = torch.nn.functional.one_hot(y, len(SHAPES)).float()
    w = torch.linalg.solve(x[fit].T @ x[fit] + 1e-2 * torch.eye(x.size(1)), x[fit].T @ target[fit])
    acc = lambda m: ((x[m] @ w).argmax(1) == y[m]).float().mean().item()
    print(f"after block {layer}: the shape from the place word, fit {acc(fit):.3f}, held out {acc(~fit):.3f}")
