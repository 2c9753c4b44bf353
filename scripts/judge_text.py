"""The frozen LM's own reading comprehension: greedy answers to held-out `text` questions (a scene in
words, then a question), per question kind. What the LM can look up in text bounds what it can look
up among image tokens, since its text positions never train after 'text'."""
import sys
import torch
import train
from data import get_sample, Collator
from data.tasks import ask
model, tok, ck = train.load_model(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
col = train.phase_collator(model, tok, {})
samples = [s for s in train.prompted("text", "test", n)]
by = {}
for s in samples:  # the kind of question: from the question's first words
    q = s["conversations"][-2]["value"].split(". ")[-1]
    kind = {"what colour": "colour", "what shape": "shape", "where is": "position", "what size": "size",
            "how many": "count"}.get(" ".join(q.split()[:2]), "other")
    by.setdefault(kind, []).append(s)
res = train.score_replies(model, col, by, "cpu")
print({k: (round(v["score"], 3), len(by[k])) for k, v in res.items()},
      "all", round(sum(v["score"] * len(by[k]) for k, v in res.items()) / len(samples), 3), len(samples))
