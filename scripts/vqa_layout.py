"""Test VQA per kind, split by where the image sits: before the question (the image tokens cannot
see the question, so the frozen LM must look the answer up among them) or after it (the expert
reads the question at the image positions and can work the answer out itself). The split is by the
prompt; with nano_cogvlm's image_first (the default since docs/cogvlm.md r8) the model reads both
layouts image first, and `--prompt_order` reads each as written (image_first off).
usage: PYTHONPATH=. python scripts/vqa_layout.py CKPT [N] [--prompt_order]"""
import collections
import sys
import train
from data import Collator, get_sample
model, tok, ck = train.load_model(sys.argv[1])
if "--prompt_order" in sys.argv:
    sys.argv.remove("--prompt_order")
    model.cfg.image_first = False
col = train.phase_collator(model, tok, {})
n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
samples = [get_sample("vqa", "test", i) for i in range(n)]
prompts, truths = zip(*map(Collator.prompt, samples))
replies, _ = train.answer(model, col, prompts, 4, "cpu")
res = collections.defaultdict(list)
for s, r, t in zip(samples, replies, truths):
    where = "image_first" if s["conversations"][0]["value"].startswith("<image>") else "question_first"
    res[where, s["kind"]].append(r == t)
    res[where, "all"].append(r == t)
for k, v in sorted(res.items()):
    print(*k, round(sum(v) / len(v), 3), len(v))
