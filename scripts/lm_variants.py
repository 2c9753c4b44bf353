"""The LM variants of docs/cogvlm.md r4: nano_cogvlm's `text` phase with one thing changed, then the
LM's reading in words judged on 600 `read` test questions (scripts/judge_text.py).
usage: PYTHONPATH=. python scripts/lm_variants.py VARIANTS OUT_DIR [train.py args, e.g. --tasks text:1,read:1]
  VARIANTS: '+'-joined changes to the code ('' for none):
  tied    the head is the embedding's rows (the code before r4)
  std=S   the embedding's init std (Config.emb_std otherwise; 0.02 before r5)
  hstd=S  the head's init std (likewise)
  after   descriptions put the size after the shape: "a red circle small at the top left"
  folded  `text`'s bare scene descriptions (1 sample in 8) followed by the `sizes` counts
  and the tasks (name them in --tasks) `echo`: a scene in words, then the same again, a copy; and
  `places`: a scene in words, then where each of its shapes is, in a random order"""
import runpy
import sys
import torch.nn as nn
import nano_cogvlm as M
import train
from data import tasks, world

changes, out = set(filter(None, sys.argv[1].split("+"))), sys.argv[2]


class Tied(nn.Module):
    def __init__(self, emb):
        super().__init__()
        self.emb = [emb]  # in a list: the embedding is not registered a second time

    def forward(self, x):
        return x @ self.emb[0].weight.t()


def model_init(self, cfg, init=M.Model.__init__):
    init(self, cfg)
    for c in changes:
        if c.startswith("std="):
            nn.init.normal_(self.decoder.emb.weight, std=float(c[4:]))
        if c.startswith("hstd="):
            nn.init.normal_(self.decoder.head.weight, std=float(c[5:]))
    if "tied" in changes:
        self.decoder.head = Tied(self.decoder.emb)


def folded(split, index, seed=0, text=tasks.text):
    s = text(split, index, seed)
    v = s["conversations"][0]["value"]
    if len(s["conversations"]) == 1 and v.startswith("a ") and "." not in v:  # a bare description
        said = tasks.by_size(v.split().count("small"), v.count(" at the "))
        s["conversations"] = [{"from": "gpt", "value": f"{v}. {said}"}]
    return s


def echo(split, index, seed=0):
    scene, _ = tasks.draw("echo", split, index, seed, tasks.known_scene)
    d = world.describe(scene)
    return {"id": f"echo/{split}/{index}", "task": "echo", "kind": "text",
            "conversations": [{"from": "gpt", "value": f"{d}. {d}"}], "media": []}


def places(split, index, seed=0):
    scene, rng = tasks.draw("places", split, index, seed, tasks.known_scene)
    said = " and ".join(f"the {o.colour} {o.shape} is at the {world.POSITIONS[o.cell]}"
                        for o in (scene[i] for i in rng.permutation(len(scene))))
    return {"id": f"places/{split}/{index}", "task": "places", "kind": "text",
            "conversations": [{"from": "gpt", "value": f"{world.describe(scene)}. {said}"}], "media": []}


tasks.TASKS["echo"], tasks.TASKS["places"] = echo, places
M.Model.__init__ = model_init
if "after" in changes:
    world.describe = lambda objs: " and ".join(
        f"a {o.colour} {o.shape} {o.size} at the {world.POSITIONS[o.cell]}" for o in objs)
if "folded" in changes:
    tasks.TASKS["text"] = folded
train.main(["--model", "cogvlm", "--phase", "text", "--out_dir", out, "--no_final_eval"] + sys.argv[3:])
sys.argv = ["judge_text.py", f"{out}/text.pt", "600", "read"]
runpy.run_path("scripts/judge_text.py", run_name="__main__")
