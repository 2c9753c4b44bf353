"""A linear probe, shared by the probing scripts: standardise features on the fit rows, fit a
linear classifier with Adam, and score it on the other rows."""
import torch
import torch.nn.functional as F


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
