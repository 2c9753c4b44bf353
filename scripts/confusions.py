"""Greedy VQA answers on 300 questions of a split (held-out test by default): accuracy per kind, the
commonest (truth, reply) confusions, and how many wrong answers name another object of the picture
(read back by the world's analyser): a binding error, not a reading one. Places are two words or
one: how many wrong ones have the first word right (the second word, or its absence, is wrong).
usage: PYTHONPATH=. python scripts/confusions.py CKPT [TASK] [SPLIT] [N, default 300]"""
import collections
import sys
import train
from data import Collator, get_sample
from data.world import POSITIONS, analyse_image
model, tok, ck = train.load_model(sys.argv[1])
col = train.phase_collator(model, tok, {})
task = sys.argv[2] if len(sys.argv) > 2 else "vqa"
split = sys.argv[3] if len(sys.argv) > 3 else "test"
samples = [get_sample(task, split, i) for i in range(int(sys.argv[4]) if len(sys.argv) > 4 else 300)]
prompts, truths = zip(*map(Collator.prompt, samples))
replies, _ = train.answer(model, col, prompts, 4, "cpu")
res, other = collections.defaultdict(list), collections.Counter()
for s, r, t in zip(samples, replies, truths):
    res[s["kind"]].append((r == t, r, t))
    if r != t and s["media"] and s["media"][0]["type"] == "image":
        objs = analyse_image(s["media"][0]["data"])
        other[s["kind"]] += r in {w for o in objs for w in (o.colour, o.shape, o.size, POSITIONS[o.cell])}
for k, v in sorted(res.items()):
    wrong = sum(not a for a, _, _ in v)
    print(k, round(sum(a for a, _, _ in v) / len(v), 3), f"wrong {wrong}, another object's {other[k]}",
          collections.Counter((t, r) for a, r, t in v if not a).most_common(5))
places = [(r, t) for s, r, t in zip(samples, replies, truths) if s["kind"] == "position" and r != t]
if places:
    print(f"position: {len(places)} wrong, {sum(r.split()[:1] == t.split()[:1] for r, t in places)} with the first word right")
