"""Summarise a train.py log.jsonl: per-phase wall-clock minutes, each eval's val loss and judged scores
per kind, text test loss, gates. Usage: python scripts/flamingo_log.py out/flamingo/log.jsonl"""
import json
import sys

recs = [json.loads(line) for line in open(sys.argv[1])]
span = {}
for r in recs:
    if r["kind"] == "train":
        span.setdefault(r["phase"], [r["time"] - 0, r["time"]])[1] = r["time"]
    if r["kind"] == "eval":
        sc = "  ".join(f"{t} {v['score']:.3f} (" + " ".join(f"{k} {x:.2f}" for k, x in v["kinds"].items()) + ")"
                       for t, v in r["scores"].items())
        extra = f"  text_test_loss {r['text_test_loss']:.4f}" if "text_test_loss" in r else ""
        print(f"{r['phase']:8s} {r['step']:5d} val {r['val_loss']:.4f}  {sc}{extra}")
    if r["kind"] == "final":
        print("final minutes", round(r["minutes"], 2))
print("phase spans (min, first to last train step):",
      {k: f"{v[0] / 60:.2f}-{v[1] / 60:.2f}" for k, v in span.items()})
gates = [r for r in recs if r["kind"] == "eval" and "diagnostics" in r]
if gates:
    print("gates at the last eval:", {k: round(v, 3) for k, v in gates[-1]["diagnostics"].items()})
