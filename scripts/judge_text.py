"""The frozen LM's own reading comprehension: greedy answers to held-out questions about a scene in
words, per question kind, and the commonest wrong answers. What the LM can look up in text bounds
what it can look up among image tokens, since its text positions never train after 'text'.
usage: PYTHONPATH=. python scripts/judge_text.py CKPT [N] [TASK]   (TASK: text (default) or read;
for read, each sample is cut after its first answer, so every question kind is judged, and the kinds
are judged again on scenes of 2-3 shapes, split by whether the question comes before the scene or after;
position, by the number of shapes)"""
import collections
import re
import sys
import train
from data import get_sample, Collator
model, tok, ck = train.load_model(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
task = sys.argv[3] if len(sys.argv) > 3 else "text"
col = train.phase_collator(model, tok, {})
if task == "read":
    samples = [get_sample("read", "test", i) for i in range(n)]
    samples = [{**s, "conversations": s["conversations"][:2]} for s in samples]
else:
    samples = train.prompted("text", "test", n)
by = {}
for s in samples:  # the kind of question: from the question's first words
    q = s["conversations"][-2]["value"].replace("\n", ". ").split(". ")
    q = next(x for x in q if x.endswith("?"))
    kind = {"what colour": "colour", "what shape": "shape", "where is": "position", "what size": "size",
            "how many": "count"}.get(" ".join(q.split()[:2]), "other")
    by.setdefault(kind, []).append(s)
res = train.score_replies(model, col, by, "cpu")
print({k: (round(v["score"], 3), len(by[k])) for k, v in res.items()},
      "all", round(sum(v["score"] * len(by[k]) for k, v in res.items()) / len(samples), 3), len(samples))
for kind in ("size", "colour"):  # words the corpus uses alike: (small, large), (red, yellow), ... (r4, r5)
    prompts, truths = zip(*map(Collator.prompt, by.get(kind, [])))
    replies, _ = train.answer(model, col, list(prompts), 4, "cpu")
    print(f"{kind}: (truth, reply) counts", collections.Counter(zip(truths, replies)).most_common(6))
prompts, truths = zip(*map(Collator.prompt, by.get("position", [])))
replies, _ = train.answer(model, col, list(prompts), 4, "cpu")
wrong = [(p, r, t) for p, t, r in zip(prompts, truths, replies) if r != t]
places = [re.findall(r"at the ([a-z ]+?)(?= and|\.)", p["conversations"][0]["value"]) for p, _, _ in wrong]
print(f"position: {len(wrong)} wrong, {sum(r in ps for (_, r, _), ps in zip(wrong, places))} of them another "
      f"object's place in the scene (a binding error), {sum(r.split()[:1] == t.split()[:1] for _, r, t in wrong)} "
      "with the first word right")
shapes = {}  # a scene's shapes are all different, so naming the shape is enough to find its place
for p, t, r in zip(prompts, truths, replies):
    shapes.setdefault(p["conversations"][0]["value"].count(" at the "), []).append(r == t)
print("position by the scene's number of shapes (chance among its places 1/n):",
      "  ".join(f"{n}: {sum(v) / len(v):.2f} ({len(v)})" for n, v in sorted(shapes.items())))
if task == "read":  # on 2-3 shapes, by layout: `vqa` puts the image before or after the question alike
    split = {}
    for kind, ss in by.items():
        for s in ss:
            v = s["conversations"][0]["value"]
            if " and " in v:  # two or more shapes
                first = "question first" if v.split("\n")[0].endswith("?") else "scene first"
                split.setdefault(f"{first}, {kind}", []).append(s)
    res = train.score_replies(model, col, split, "cpu")
    print("on 2-3 shapes:", "  ".join(f"{k} {v['score']:.3f} ({len(split[k])})" for k, v in sorted(res.items())))
