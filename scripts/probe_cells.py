"""Does each image token know where it is? A linear probe from nano_llava's image tokens (the ViT's
select_layer, one token per grid cell) to the cell's index 0-8, fitted on 400 train scenes and
scored on 200 test scenes, every token of each. 1.0: the place is in the token's content.

    PYTHONPATH=. python scripts/probe_cells.py out/llava/vision.pt
"""
import sys

import torch
import torch.nn.functional as F

import train
from data.tasks import get_sample

torch.set_num_threads(1)
model, _, _ = train.load_model(sys.argv[1])
model.eval()


@torch.no_grad()
def tokens(split, n):
    images = [torch.from_numpy(get_sample("cells", split, i)["media"][0]["data"]) for i in range(n)]
    images = torch.stack(images).permute(0, 3, 1, 2).float() / 255  # (n, 3, H, W), as the collator gives
    x = model.image_tokens(images)  # (n, 9, D)
    return x.flatten(0, 1), torch.arange(9).repeat(n)  # every token, and its cell


x, y = tokens("train", 400)
xt, yt = tokens("test", 200)
mu, sd = x.mean(0), x.std(0) + 1e-5
probe = torch.nn.Linear(x.size(1), 9)
opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
for _ in range(300):  # full-batch logistic regression on standardised features
    loss = F.cross_entropy(probe((x - mu) / sd), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    acc = (probe((xt - mu) / sd).argmax(-1) == yt).float().mean().item()
print(f"{sys.argv[1]}: cell index read back from {acc:.3f} of the test tokens")
