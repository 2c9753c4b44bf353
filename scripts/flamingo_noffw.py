"""Flamingo's mixture phase with the dense FFW of every GATED XATTN-DENSE block held at zero (its
gate forced to 0), so that nothing trainable sees the question except through the image: does the
FFW let the model answer from the words alone? (docs/flamingo.md, r3)
usage: PYTHONPATH=. python scripts/flamingo_noffw.py OUT_DIR [VISION_CKPT] [train.py args]"""
import sys
import nano_flamingo as M
import train

gates = M.GatedXAttnDense.gates
M.GatedXAttnDense.gates = lambda self: (gates(self)[0], gates(self)[1] * 0)
out, rest = sys.argv[1], sys.argv[2:]
init = rest.pop(0) if rest and not rest[0].startswith("--") else "out/fl_r3/vision.pt"
train.main(["--model", "flamingo", "--phase", "mixture", "--init_from", init, "--out_dir", out] + rest)
