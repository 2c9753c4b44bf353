"""Greedy VQA answers on 300 questions of a split (held-out test by default): accuracy per kind and
the commonest (truth, reply) confusions. usage: PYTHONPATH=. python scripts/confusions.py CKPT [TASK] [SPLIT]"""
import collections
import sys
import train
from data import Collator, get_sample
model, tok, ck = train.load_model(sys.argv[1])
col = train.phase_collator(model, tok, {})
task = sys.argv[2] if len(sys.argv) > 2 else "vqa"
split = sys.argv[3] if len(sys.argv) > 3 else "test"
samples = [get_sample(task, split, i) for i in range(300)]
prompts, truths = zip(*map(Collator.prompt, samples))
replies, _ = train.answer(model, col, prompts, 4, "cpu")
res = collections.defaultdict(list)
for s, r, t in zip(samples, replies, truths):
    res[s["kind"]].append((r == t, r, t))
for k, v in sorted(res.items()):
    print(k, round(sum(a for a, _, _ in v) / len(v), 3), collections.Counter((t, r) for a, r, t in v if not a).most_common(5))
