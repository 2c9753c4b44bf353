"""A stand-in model for the tests: the smallest thing that uses every optional part of the model
contract (docs/DESIGN.md), without being any paper's architecture.

An image becomes 4 codes, one per quadrant (its mean brightness in `levels` steps), and occupies
<boi> codes <eoi>: 6 positions that the model predicts (media_targets, as Chameleon does), with the
codes as private ids after the tokenizer's. decode_media draws codes back into an image. The
"decoder" is a causal running mean of embeddings under a linear head, so causality and the cache
of generate (a running sum) hold by construction. It also has an aux term (a z-loss), diagnostics,
begin_phase, an objective phase and a loss="all" phase.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 512
    image_id: int = 4
    boi_id: int = 8
    eoi_id: int = 9
    eos_id: int = 2
    n_embd: int = 16
    levels: int = 4
    max_seq: int = 256
    z_coef: float = 1e-3


class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size + cfg.levels, cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size + cfg.levels)
        self.probe = nn.Linear(3, cfg.vocab_size)  # the 'warm' objective's throw-away head
        self.media_tokens = {"image": 6}
        self.media_targets = {"image"}

    def codes(self, images):  # (N, 3, H, W) -> (N, 4) private ids
        q = F.adaptive_avg_pool2d(images.mean(1, keepdim=True), 2).flatten(1)
        return self.cfg.vocab_size + (q * self.cfg.levels).long().clamp(0, self.cfg.levels - 1)

    def swap(self, tokens, media):
        """Each run of 6 <image> placeholders becomes <boi> code code code code <eoi>."""
        slots, images = tokens == self.cfg.image_id, (media or {}).get("image")
        n = 0 if images is None else len(images)
        if int(slots.sum()) != 6 * n:
            raise ValueError(f"{int(slots.sum())} <image> positions for {n} images of 6")
        if not n:
            return tokens
        span = torch.cat([torch.full((n, 1), self.cfg.boi_id), self.codes(images), torch.full((n, 1), self.cfg.eoi_id)], 1)
        return tokens.masked_scatter(slots, span.to(tokens))

    def forward(self, tokens, targets=None, media=None):
        ids = self.swap(tokens, media)
        h = self.emb(ids).cumsum(1) / torch.arange(1, ids.size(1) + 1)[:, None]  # (B, T, C) causal mean
        logits = self.head(h)
        if targets is None:
            return logits, None, {}
        nxt = torch.cat([ids[:, 1:], ids[:, -1:]], 1)  # a media target is the next position's own id
        targets = torch.where(targets == self.cfg.image_id, nxt, targets)
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        z = self.cfg.z_coef * logits.logsumexp(-1)[targets != -100].pow(2).mean()  # where loss is taken
        return logits, ce + z, {"z_loss": z}

    def probe_loss(self, tokens, targets=None, media=None):
        """The 'warm' objective: each row's first answer token from its image's mean colour."""
        logits = self.probe(media["image"].mean((2, 3)))[:, None]  # (B, 1, vocab)
        if targets is None:
            return logits, None, {}
        first = torch.stack([t[t != -100][0] for t in targets])
        return logits, F.cross_entropy(logits[:, 0], first), {}

    @torch.no_grad()
    def generate(self, tokens, media=None, max_new_tokens=8, temperature=1.0, top_k=None):
        ids = self.swap(tokens, media)
        total, n, out = self.emb(ids).sum(1), ids.size(1), []  # the whole cache: a running sum
        for _ in range(max_new_tokens):
            logits = self.head(total / n)
            nxt = logits.argmax(-1) if temperature == 0 else torch.multinomial((logits / temperature).softmax(-1), 1)[:, 0]
            out.append(nxt)
            total, n = total + self.emb(nxt), n + 1
        return torch.stack(out, 1)

    def decode_media(self, ids):
        """Each generated <boi> c c c c <eoi> becomes <image> and a 16x16 grey image of its codes."""
        ids, out, images, i = ids.tolist(), [], [], 0
        while i < len(ids):
            span = ids[i:i + 6]
            if len(span) == 6 and span[0] == self.cfg.boi_id and span[5] == self.cfg.eoi_id \
                    and all(c >= self.cfg.vocab_size for c in span[1:5]):
                q = (torch.tensor(span[1:5]) - self.cfg.vocab_size + 0.5) / self.cfg.levels
                images.append(q.view(1, 2, 2).expand(3, 2, 2).repeat_interleave(8, 1).repeat_interleave(8, 2))
                out.append(self.cfg.image_id)
                i += 6
            else:
                out += [ids[i]] if ids[i] < self.cfg.vocab_size else []  # a stray code is dropped
                i += 1
        return out, ({"image": torch.stack(images)} if images else {})

    def diagnostics(self):
        return {"head_norm": float(self.head.weight.detach().norm())}  # the contract: name -> float

    def begin_phase(self, name):
        if name == "draw":  # like CogVLM's copy: the new phase starts from what the last one learned
            with torch.no_grad():
                self.head.bias[:self.cfg.vocab_size].copy_(self.probe.bias)

    def set_phase(self, name):
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; the stand-in has {list(PHASES)}")
        for p in self.parameters():
            p.requires_grad = False
        for group in PHASES[name]["train"]:
            self.get_submodule(group).requires_grad_(True)


PHASES = {
    "warm": dict(train=["probe"], tasks={"caption": 1.0}, steps=2, lr=1e-2, batch_size=4, objective="probe_loss"),
    "draw": dict(train=["emb", "head"], tasks={"text_to_image": 1.0, "text": 1.0}, eval=["text_to_image"], steps=2,
                 lr=1e-2, batch_size=4, loss="all"),
}
