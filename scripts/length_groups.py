"""Time one phase's training step with its batch padded in 1, 2, 4 ... groups by length (train.py's
length_groups): the same 30 batches for every grouping, steps interleaved so that a change in the
machine's speed hits every grouping alike. Prints ms per step and the share of padded positions.
usage: PYTHONPATH=. python scripts/length_groups.py MODEL PHASE CKPT [GROUPS, default 1,2,4] [THREADS, default 2]
e.g.   PYTHONPATH=. python scripts/length_groups.py cogvlm text out/cogvlm/text.pt"""
import sys
import time
import torch
import train
from data import IGNORE, Mixture

name, phase, ckpt = sys.argv[1:4]
groups = [int(g) for g in (sys.argv[4] if len(sys.argv) > 4 else "1,2,4").split(",")]
args, mod, overrides = train.parse_args(["--model", name, "--phase", phase, "--init_from", ckpt, "--out_dir",
                                         "/tmp/length_groups", "--threads", sys.argv[5] if len(sys.argv) > 5 else "2"])
tr = train.Trainer(args, mod, overrides)
tr.model.set_phase(phase)
net, col, B = tr.net_for(phase), tr.collator_for(phase), tr.specs[phase]["batch_size"]
opt = train.make_optimizer(tr.model, 1e-4, 0.1, 0.95, "cpu", tr.specs[phase].get("weight_decay"))
mix = Mixture(tr.specs[phase]["tasks"], "train", 10**6, 0)
rows = [[mix[s * B + i] for i in range(B)] for s in range(30)]
steps = {g: [col.by_length(r, g) for r in rows] for g in groups}


def step(batches):  # train.py's step: each group weighted by its share of the target tokens
    counts = torch.tensor([float((b["targets"] != IGNORE).sum()) for b in batches])
    for b, n in zip(batches, counts):
        _, loss, _ = net(b["tokens"], b["targets"], b["media"])
        (loss * n / counts.sum()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


spent = dict.fromkeys(groups, 0.0)
for i in range(len(rows)):
    for g in groups:
        t = time.time()
        step(steps[g][i])
        spent[g] += (time.time() - t) if i >= 3 else 0.0  # the first steps warm up
for g in groups:
    pad = sum(int((b["tokens"] == tr.tok.pad).sum()) for s in steps[g] for b in s)
    total = sum(b["tokens"].numel() for s in steps[g] for b in s)
    print(f"{name} {phase} length_groups {g}: {1000 * spent[g] / (len(rows) - 3):.1f} ms/step, "
          f"padding {pad / total:.3f} of {total / len(rows):.0f} positions a step")
