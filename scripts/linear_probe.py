"""Shared by the probing scripts: a linear probe (standardise features on the fit rows, fit a linear
classifier with Adam, score it on the other rows), the variance share a label explains, and
single-object images labelled by cell and by object."""
import numpy as np
import torch
import torch.nn.functional as F

from data import world


def probe(f, y, fit, k, steps=300):
    """f (N, D) features, y (N,) labels in [0, k), fit (N,) bool: the rows to fit on.
    -> (held-out accuracy, accuracy on the fit rows, final training loss)"""
    f = (f - f[fit].mean(0)) / (f[fit].std(0) + 1e-5)
    w = torch.zeros(f.size(1), k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([w, b], 1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(f[fit] @ w + b, y[fit])
        opt.zero_grad(), loss.backward(), opt.step()
    right = (f @ w + b).argmax(1) == y
    return float(right[~fit].float().mean()), float(right[fit].float().mean()), float(loss)


def share(f, label):
    """The fraction of the variance of features f (N, D) that the means of label's (N,) groups explain."""
    f = f - f.mean(0)
    means = torch.zeros_like(f)
    for v in label.unique():
        means[label == v] = f[label == v].mean(0)
    return float(means.pow(2).sum() / f.pow(2).sum())


def one_object_images(n, seed=0):
    """n single-object images (n, 3, H, W) in [0, 1], each object's cell (n,) and its (colour, shape) as an id (n,)."""
    rng = np.random.default_rng(seed)
    imgs, cell, obj = [], [], []
    for _ in range(n):
        o = world.sample_scene(rng, max_objects=1)[0]
        imgs.append(torch.from_numpy(world.render_scene([o], rng).copy()).permute(2, 0, 1).float() / 255)
        cell.append(o.cell), obj.append(f"{o.colour} {o.shape}")
    return torch.stack(imgs), torch.tensor(cell), torch.tensor([sorted(set(obj)).index(o) for o in obj])
