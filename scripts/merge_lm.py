"""One-off: a 'vision' checkpoint whose LM (decoder.*) is taken from another run's 'text' checkpoint.
The vision phase never reads the decoder (cell_words uses the ViT and its heads only), so this equals
re-running 'vision' after the new 'text' up to the order of random draws, and saves that phase's time.
usage: python scripts/merge_lm.py TEXT.pt VISION.pt OUT.pt"""
import sys
import torch
text, vision = (torch.load(p, weights_only=True) for p in sys.argv[1:3])
vision["model"] = {k: (text["model"][k] if k.startswith("decoder.") else v) for k, v in vision["model"].items()}
vision.pop("optimizer", None)
torch.save(vision, sys.argv[3])
print("decoder from", sys.argv[1], "the rest from", sys.argv[2], "->", sys.argv[3])
