"""Where does the answer lose the object's place? For single-object VQA prompts ("where is the red
circle?", image before or after the question), the residual stream at the answer position (the
last prompt token) is read before each gated layer, along with what that layer's cross-attention
adds (out(att), before its tanh gate) and the residual after the frozen block. A linear probe on
each (fit on N prompts, scored on 400 more, all of the train split: the test split holds other
object-cell pairs, so a probe there could only guess a cell from what the object is) names the object's cell.
usage: PYTHONPATH=. python scripts/flamingo_readout.py CKPT [N]"""
import sys

import torch

import train
from scripts.linear_probe import probe
from data import Collator, get_sample, world

torch.set_num_threads(1)
model, tok, ck = train.load_model(sys.argv[1])
col = train.phase_collator(model, tok, {})
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1200
prompts, cells, i = [], [], 0
while len(prompts) < n + 400:  # position questions about one-object scenes
    s = get_sample("vqa_one", "train", i)
    i += 1
    words = s["conversations"][-1]["value"]
    if s["kind"] == "position":
        prompts.append(Collator.prompt(s)[0]), cells.append(world.POSITIONS.index(words))
feats = {}


def keep(name):
    def hook(mod, args, out):
        if out.size(1) > 1:  # the prefill only: its last position is the answer's first query
            feats.setdefault(name, []).append(out[:, -1].detach())
    return hook


for j, g in enumerate(model.xattn):
    g.out.register_forward_hook(keep(f"xattn {j} out(att)"))
    g.register_forward_hook(keep(f"after gated layer {j}"))
for j, b in enumerate(model.decoder.blocks):
    b.register_forward_hook(keep(f"after frozen block {j}"))
replies, _ = train.answer(model, col, prompts, 1, "cpu")
by_len = {}  # answer() batches prompts by length, in first-seen order: the hooks saw them so
for k in range(len(prompts)):
    by_len.setdefault(len(col.encode(prompts[k])[0]), []).append(k)
order = [k for rows in by_len.values() for k in rows]
y = torch.tensor(cells)[order]
train_rows = torch.tensor([k < n for k in order])
print("greedy first word right:", sum(r.split()[0] == world.POSITIONS[c].split()[0] for r, c in zip(replies, cells)) / len(cells))
for name, f in sorted(feats.items(), key=lambda kv: (kv[0].split()[-1], kv[0])):
    acc, fit, _ = probe(torch.cat(f), y, train_rows, 9)
    print(f"{name:24s} cell probe {acc:.3f} (fit {fit:.3f})")
