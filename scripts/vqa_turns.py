"""Teacher-forced exact match of every answer in test `conversation`s, first turn against later ones,
per question kind (an answer is right when the argmax of each of its tokens is). The first question
may come before the image or after it; later ones always come after it. `--prompt_order` reads each
prompt as written (nano_cogvlm's image_first off, as in docs/cogvlm.md r7).
usage: PYTHONPATH=. python scripts/vqa_turns.py CKPT [N] [--prompt_order]"""
import collections
import sys
import torch
import train
from data import IGNORE, get_sample
model, tok, ck = train.load_model(sys.argv[1])
if "--prompt_order" in sys.argv:
    sys.argv.remove("--prompt_order")
    model.cfg.image_first = False
model.eval()
col = train.phase_collator(model, tok, {})
n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
KINDS = {"what colour": "colour", "where is": "position", "what shape": "shape", "what size": "size", "how many": "count"}
res = collections.defaultdict(list)
samples = [get_sample("conversation", "test", i) for i in range(n)]
for i in range(0, n, 50):
    batch = samples[i:i + 50]
    b = col(batch)
    with torch.no_grad():
        logits, _, _ = model(b["tokens"], b["targets"], b["media"])
    right = (logits.argmax(-1) == b["targets"]) | (b["targets"] == IGNORE)  # (B, T)
    for row, s in enumerate(batch):
        questions = [c["value"] for c in s["conversations"] if c["from"] == "human"]
        pos = (b["targets"][row] != IGNORE).nonzero().squeeze(1)
        answers = torch.tensor_split(pos, (torch.diff(pos) > 1).nonzero().squeeze(1) + 1)  # runs of target positions
        for turn, (q, a) in enumerate(zip(questions, answers)):
            kind = next(k for w, k in KINDS.items() if w in q)
            res["first" if turn == 0 else "later", kind].append(bool(right[row, a].all()))
for k, v in sorted(res.items()):
    print(*k, round(sum(v) / len(v), 3), len(v))
