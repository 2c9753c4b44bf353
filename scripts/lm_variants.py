"""The LM variants of docs/cogvlm.md r4-r7: nano_cogvlm's `text` phase with one thing changed, then the
LM's reading in words judged on 600 `read` test questions (scripts/judge_text.py).
usage: PYTHONPATH=. python scripts/lm_variants.py VARIANTS OUT_DIR [train.py args, e.g. --tasks text:1,read:1]
  VARIANTS: '+'-joined changes to the code ('' for none):
  tied    the head is the embedding's rows (the code before r4)
  std=S   the embedding's init std (Config.emb_std otherwise; 0.02 before r5)
  hstd=S  the head's init std (likewise)
  init=N  the weights initialised as with --seed N, the data still --seed's (init against data order)
  after   descriptions put the size after the shape: "a red circle small at the top left"
  placefirst  descriptions put the place first: "at the top left a small red circle"
  terse   descriptions drop "at the": "a small red circle top left"
  multi   `read` and `sizes` scenes of 2-3 shapes only (on one shape, any place named is right)
  turnsN  `read` asks N questions a scene, not 4 (use with multi: one shape allows only 5)
  folded  `text`'s bare scene descriptions (1 sample in 8) followed by the `sizes` counts
  qfirst  `read` always asks its first question before the scene (at random otherwise, as `vqa` does)
  sfirst  `read` always puts the scene first, the layout nano_cogvlm's image_first reads (r8)
  posN    questions ask for a position N times as often as for each other kind (in `read` and `text`)
  and the tasks (name them in --tasks) `echo`: a scene in words, then the same again, a copy; and
  `places`: a scene in words, then where each of its shapes is, in a random order; and `atplace`: a
  scene in words, then "what is at the P?" of each of its shapes, in a random order, answered "the C S"
  (the reverse lookup: the place words are found by themselves, so only binding must be learned)"""
import runpy
import sys
import torch
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
        if c.startswith("init="):  # re-initialise from seed N, then leave the RNG as --seed's run has it
            state = torch.get_rng_state()
            torch.manual_seed(int(c[5:]))
            init(self, cfg)
            torch.set_rng_state(state)
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


def atplace(split, index, seed=0):
    scene, rng = tasks.draw("atplace", split, index, seed, tasks.known_scene)
    turns = [t for i in rng.permutation(len(scene)) for t in
             (f"what is at the {world.POSITIONS[scene[i].cell]}?", f"the {scene[i].colour} {scene[i].shape}")]
    turns[0] = f"{world.describe(scene)}.\n{turns[0]}"
    return tasks._sample("atplace", split, index, "text", turns)


tasks.TASKS["echo"], tasks.TASKS["places"], tasks.TASKS["atplace"] = echo, places, atplace
M.Model.__init__ = model_init
GRAMMARS = {"after": "a {c} {s} {z} at the {p}", "placefirst": "at the {p} a {z} {c} {s}", "terse": "a {z} {c} {s} {p}"}
for c in changes & GRAMMARS.keys():
    world.describe = lambda objs, g=GRAMMARS[c]: " and ".join(
        g.format(z=o.size, c=o.colour, s=o.shape, p=world.POSITIONS[o.cell]) for o in objs)
if "multi" in changes:
    tasks.known_scene = lambda rng: next(s for s in iter(lambda: world.sample_scene(rng, 2), None)
                                         if not world.is_novel(s))
for c in changes:
    if c.startswith("turns"):
        tasks.TASKS["read"] = lambda split, index, seed=0, n=int(c[5:]): tasks.read(split, index, seed, n)
if "folded" in changes:
    tasks.TASKS["text"] = folded
with_image = tasks.with_image
if "qfirst" in changes:
    tasks.with_image = lambda question, rng: (rng.random(), f"{question}\n<image>")[1]  # the same draws
if "sfirst" in changes:
    tasks.with_image = lambda question, rng: (rng.random(), f"<image>\n{question}")[1]
kinds = tasks.VQA_KINDS
for c in changes:
    if c.startswith("pos"):
        tasks.VQA_KINDS = kinds + ("position",) * (int(c[3:]) - 1)
train.main(["--model", "cogvlm", "--phase", "text", "--out_dir", out, "--no_final_eval"] + sys.argv[3:])
tasks.with_image, tasks.VQA_KINDS = with_image, kinds  # judged on the test split as it is
sys.argv = ["judge_text.py", f"{out}/text.pt", "600", "read"]
runpy.run_path("scripts/judge_text.py", run_name="__main__")
