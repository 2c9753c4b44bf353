"""docs/cogvlm.md r7: nano_cogvlm with image positions that attend to image positions only. In CogVLM
the image comes first, so its positions never see text; the toy data may put it after the question.
Runs train.py with that mask, or (first argument `layout`) scripts/vqa_layout.py.
usage: PYTHONPATH=. python scripts/image_only_mask.py [train.py args | layout CKPT [N]]"""
import runpy
import sys
import torch
import nano_cogvlm as M
import train

embed = M.Model.embed


def image_only(self, tokens, media):
    x, image, pos, mask = embed(self, tokens, media)
    n_img = 0 if not media or media.get("image") is None else media["image"].size(0)
    inside = self.layout(tokens, n_img)[1] >= 0  # (B, T): the image spans' positions
    if inside.any():
        T = tokens.size(1)
        if mask is None:
            mask = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril().expand(tokens.size(0), 1, T, T)
        mask = mask & ~(inside.unsqueeze(2) & ~inside.unsqueeze(1)).unsqueeze(1)  # image row, text column: no
    return x, image, pos, mask


M.Model.embed = image_only
if sys.argv[1:2] == ["layout"]:
    sys.argv = ["scripts/vqa_layout.py"] + sys.argv[2:]
    runpy.run_path("scripts/vqa_layout.py", run_name="__main__")
else:
    train.main(sys.argv[1:])
