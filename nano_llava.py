r"""nano_llava.py: LLaVA in one file. Type C fusion: non-tokenized early fusion.

Papers: LLaVA, Visual Instruction Tuning (arXiv 2304.08485) and LLaVA-1.5, Improved Baselines with
Visual Instruction Tuning (arXiv 2310.03744). Fusion taxonomy: arXiv 2405.17927, Type C: a continuous
vision encoder whose outputs are spliced into the language model's *input*; the LLM itself is unchanged.

    image (N,3,64,64) -> resize 72 -> ViT over a 6x6 grid of 12px patches -> its last layer
                                          (N, 36, 128), no CLS
                                                     |  pixel shuffle: 2x2 neighbours -> 1 token
                                                     v
                                          (N, 9, 512): one token per cell of the 3x3 world grid
                                                     |  projector: Linear-GELU-Linear (1.5) or Linear (v1),
                                                     |             then RMSNorm (not in LLaVA)
                                                     v
                                          image embeddings (N, 9, C)
                                                     |  written over the <image> placeholders
    tokens: <bos> what colour is the circle? <image>x9 <sep>  -> embed (B, T, C) -> decoder -> logits
                                                          (RoPE, RMSNorm, SwiGLU, SDPA, KV cache)

Reading order: Config -> rope / RMSNorm / Attention / MLP / Block (the shared modern decoder recipe)
-> Decoder -> ViT -> Model (pixel shuffle, splice, forward, generate) -> PHASES.

The training recipe (PHASES, run in order by train.py):
  text      decoder on text-only sentences. Stands in for the pre-trained LLM (Vicuna).
  vision    ViT + a linear head that names the size, colour and shape in each cell of the grid (the
            `cells` task), and which cell each token is. Stands in for the pre-trained CLIP: the ViT
            learns what images show, and where, from a supervised objective whose head is then
            thrown away (attribute pre-training).
  align     LLaVA stage 1, "pre-training for feature alignment" (2304.08485 sec 4.1): ViT and LLM
            frozen, only the projector trains, on plain captions (<image> then the caption).
  instruct  LLaVA stage 2, "fine-tuning end-to-end" (sec 4.2): ViT frozen; projector and LLM train
            on visual question answering; the loss is on the answers only (the collator's -100).

Simplified or changed relative to the papers: the ViT is tiny and trained here (no CLS token, since
nothing pools it); a pixel shuffle (not in LLaVA; used by InternVL, Idefics3, nanoVLM) merges 2x2
patches so the LLM gets one token per cell of the world's 3x3 grid while the ViT still sees each
shape in several patches (with one patch per cell it told shapes apart far less often);
pixel_shuffle=1 turns it off (LLaVA's own; the 'vision' head, which needs one token per cell, then
cannot run). The LLM reads the ViT's last layer, not LLaVA's penultimate one (select_layer;
Model.image_tokens says why). The projector ends in an RMSNorm (proj_norm=False: LLaVA's own; Model
says why). The measurements behind these choices are in docs/llava.md. The conversation
template is <bos> user <sep> assistant <eos> instead of Vicuna's "USER: ... ASSISTANT:", and the
LLM's head is tied to its token embedding.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    # language model (train.py fills vocab_size and the *_id fields from the tokenizer)
    vocab_size: int = 512
    image_id: int = 4
    eos_id: int = 2
    n_layer: int = 4
    n_head: int = 8                # 8 heads of 16: 4 heads of 32 learned the position lookup less often
    n_embd: int = 128
    mlp_hidden: int = 352          # SwiGLU hidden, ~8/3 n_embd
    max_seq: int = 256
    rope_base: float = 10000.0
    # vision encoder
    # The toy prior, set here: 72 px = 3 world cells x 2 x 12 px patches, so after the 2x2 pixel
    # shuffle there is exactly one LLM token per cell of the world's 3x3 grid.
    image_size: int = 72           # images are resized to this, like CLIP's pre-processing
    patch: int = 12                # 72/12 = a 6x6 grid of patches
    pixel_shuffle: int = 2         # 2x2 neighbouring patches -> one LLM token (1: off, LLaVA's own)
    vit_layers: int = 3
    vit_embd: int = 128
    vit_heads: int = 4
    vit_mlp: int = 512
    select_layer: int = -1         # the layer the 'vision' head trains and the LLM reads (LLaVA: -2; see Model)
    projector: str = "mlp2x_gelu"  # LLaVA-1.5's 2-layer MLP; "linear" for LLaVA v1
    proj_norm: bool = True         # RMSNorm on the projector's output, keeping image tokens at word scale
    cell_pos: bool = True          # the 'vision' head also names which cell each token is (see cell_words)

    def __post_init__(self):
        if self.n_embd % self.n_head or self.vit_embd % self.vit_heads:
            raise ValueError("n_embd must divide by n_head and vit_embd by vit_heads")
        if self.image_size % (self.patch * self.pixel_shuffle):
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch x pixel_shuffle "
                             f"({self.patch} x {self.pixel_shuffle})")
        if self.projector not in ("mlp2x_gelu", "linear"):
            raise ValueError(f"projector must be 'mlp2x_gelu' or 'linear', got {self.projector!r}")
        if not -self.vit_layers <= self.select_layer < self.vit_layers:
            raise ValueError(f"select_layer {self.select_layer} out of range for {self.vit_layers} ViT layers")


# ----------------------------------------------------------------------------- the decoder recipe

def rope_table(head_dim, max_seq, base):
    """cos/sin of rotary position embeddings (RoFormer, arXiv 2104.09864), each (max_seq, head_dim/2)."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    ang = torch.outer(torch.arange(max_seq).float(), inv)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs of channels of x (B, H, T, hd) by position-dependent angles."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin, cache=None, pos=0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # 3x (B, H, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # KV cache: write this step's keys/values, attend to all so far
            cache[0][:, :, pos:pos + T], cache[1][:, :, pos:pos + T] = k, v
            k, v = cache[0][:, :, :pos + T], cache[1][:, :, :pos + T]
        # a prefill (from position 0) is causal; a single new token may see everything cached
        assert T == 1 or pos == 0, "multi-token steps are only supported from position 0"
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU (arXiv 2002.05202): down(silu(gate(x)) * up(x))."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim, n_head, hidden):
        super().__init__()
        self.norm1, self.attn = RMSNorm(dim), Attention(dim, n_head)
        self.norm2, self.mlp = RMSNorm(dim), MLP(dim, hidden)

    def forward(self, x, cos, sin, cache=None, pos=0):
        x = x + self.attn(self.norm1(x), cos, sin, cache, pos)
        return x + self.mlp(self.norm2(x))


class Decoder(nn.Module):
    """Token embedding, blocks, final norm, head tied to the embedding. Takes embeddings, not ids,
    so that image features can be spliced in first."""

    def __init__(self, vocab, dim, n_layer, n_head, hidden, max_seq, rope_base):
        super().__init__()
        self.n_head = n_head
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, n_head, hidden) for _ in range(n_layer))
        self.norm = RMSNorm(dim)
        cos, sin = rope_table(dim // n_head, max_seq, rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x, caches=None, pos=0):  # x (B, T, C) -> logits (B, T, vocab)
        T = x.size(1)
        if pos + T > self.cos.size(0):
            raise ValueError(f"sequence of {pos + T} positions exceeds max_seq={self.cos.size(0)}")
        cos, sin = self.cos[pos:pos + T], self.sin[pos:pos + T]
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, caches[i] if caches else None, pos)
        return self.norm(x) @ self.emb.weight.t()

    def new_caches(self, B, T, like):
        hd = self.emb.weight.size(1) // self.n_head
        return [(like.new_zeros(B, self.n_head, T, hd), like.new_zeros(B, self.n_head, T, hd))
                for _ in self.blocks]


# ----------------------------------------------------------------------------- vision encoder

class ViTBlock(nn.Module):
    """A standard pre-LayerNorm ViT block (arXiv 2010.11929): bidirectional attention, GELU MLP."""

    def __init__(self, dim, n_head, hidden):
        super().__init__()
        self.n_head = n_head
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):  # (N, P, D)
        N, P, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(N, P, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, P, D))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.size = cfg.image_size
        self.patch_embed = nn.Conv2d(3, cfg.vit_embd, cfg.patch, stride=cfg.patch)
        self.pos = nn.Parameter(torch.randn(1, (cfg.image_size // cfg.patch) ** 2, cfg.vit_embd) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(cfg.vit_embd, cfg.vit_heads, cfg.vit_mlp) for _ in range(cfg.vit_layers))

    def forward(self, images, layer=-1):
        """images (N, 3, H, W) in [0, 1] -> the hidden states after block `layer`, (N, P, D)."""
        if images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
        x = self.patch_embed(images * 2 - 1).flatten(2).transpose(1, 2) + self.pos  # (N, P, D)
        for block in self.blocks[:layer % len(self.blocks) + 1]:
            x = block(x)
        return x


# ----------------------------------------------------------------------------- the model

class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = ViT(cfg)
        C, D = cfg.n_embd, cfg.vit_embd * cfg.pixel_shuffle ** 2  # D: a shuffled token's width
        mlp = [nn.Linear(D, C)] if cfg.projector == "linear" else [nn.Linear(D, C), nn.GELU(), nn.Linear(C, C)]
        # An RMSNorm after the projector (not in LLaVA) keeps image tokens at the scale of words: in a
        # pre-norm decoder a block's update is negligible next to a token far larger than the rest, so
        # the LLM could not work on image positions (e.g. write a token's place into it; docs/llava.md).
        self.projector = nn.Sequential(*mlp, *([RMSNorm(C)] if cfg.proj_norm else []))
        self.decoder = Decoder(cfg.vocab_size, C, cfg.n_layer, cfg.n_head, cfg.mlp_hidden, cfg.max_seq, cfg.rope_base)
        # the 'vision' phase's throw-away heads: each cell token names which of the 9 cells it is, and
        # its size, colour and shape
        self.pos_head = nn.Linear(D, 9)
        self.cell_head = nn.Linear(D, 3 * cfg.vocab_size)
        self.media_tokens = {"image": (cfg.image_size // cfg.patch // cfg.pixel_shuffle) ** 2}
        self.apply(self._init)
        for name, p in self.named_parameters():  # scaled init of residual outputs (GPT-2)
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def merge_patches(self, x):
        """(N, g*g, D) patch features -> (N, (g/s)^2, D*s*s): each s x s block of neighbouring
        patches becomes one token (the projector trick of InternVL, Idefics3 and nanoVLM)."""
        s = self.cfg.pixel_shuffle
        N, P, D = x.shape
        g = math.isqrt(P)
        x = x.view(N, g // s, s, g // s, s, D).permute(0, 1, 3, 2, 4, 5)  # (N, rows, cols, s, s, D)
        return x.reshape(N, (g // s) ** 2, s * s * D)

    def image_tokens(self, images):
        """(N, 3, H, W) -> (N, 9, D): the select_layer features of the ViT, one token per grid cell.
        LLaVA reads CLIP's penultimate layer, its last being tuned to CLIP's own objective. Here the
        'vision' head shapes a layer into attributes, so the LLM must read that same layer: a layer
        above the head's has not learned them (docs/llava.md)."""
        return self.merge_patches(self.encoder(images, self.cfg.select_layer))

    def embed(self, tokens, media):
        """Token embeddings with the image features written over the <image> placeholders."""
        media = media or {}
        if set(media) - {"image"}:
            raise ValueError(f"nano_llava takes only images; got media {sorted(media)}")
        x = self.decoder.emb(tokens)  # (B, T, C)
        slots = tokens == self.cfg.image_id  # (B, T)
        images = media.get("image")
        n_img = 0 if images is None else images.size(0)
        P = self.media_tokens["image"]
        if int(slots.sum()) != n_img * P:
            raise ValueError(f"{int(slots.sum())} <image> placeholder positions but {n_img} images x {P} "
                             f"patches: expand each <image> marker to media_tokens['image']={P} positions")
        # with no image the projector runs on an empty batch: it still takes part in the step (DDP)
        feats = self.image_tokens(images) if n_img else x.new_zeros(0, P, self.projector[0].in_features)
        feats = self.projector(feats)  # (N, P, C)
        # row-major order of the placeholders == the packing order of the images
        return x.masked_scatter(slots.unsqueeze(-1), feats.to(x.dtype))

    def cell_words(self, tokens, targets=None, media=None):
        """The 'vision' phase's objective (PHASES names it): logits of the 3 words (size, colour, shape
        or "empty" x3) that name each cell, read at once from the cell's token by a linear head,
        (N, 27, vocab) for N images in the order of the `cells` task's text, and their cross-entropy,
        plus (cell_pos) the head's guess of which cell each token is. Not autoregressive: the words
        come from the image only."""
        images = (media or {}).get("image")
        if images is None or images.size(0) != tokens.size(0):
            raise ValueError("the 'vision' phase takes one image per row (the `cells` task)")
        if self.media_tokens["image"] != 9:
            raise ValueError("the 'vision' head names the 9 cells of the world's grid: it needs one image token per "
                             "cell, image_size / (patch x pixel_shuffle) == 3")
        x = self.image_tokens(images)  # (N, 9, D)
        logits = self.cell_head(x).reshape(x.size(0), 27, -1)  # (N, 27, vocab)
        loss, aux = None, {}
        if targets is not None:
            keep, n = targets != -100, logits.size(1)
            if not bool((keep.sum(1) == n + 1).all()):
                raise ValueError(f"the 'vision' phase trains on `cells` samples: {n} words and <eos> per row")
            words = targets[keep].view(-1, n + 1)[:, :n]  # the answer's words, <eos> dropped
            loss = F.cross_entropy(logits.flatten(0, 1).float(), words.flatten())
            if self.cfg.cell_pos:
                # Each token also names its own cell, so it carries its place in its content and the
                # LLM can answer "where is the red circle?" by reading the red circle's token instead
                # of counting its offset from the image's start. CLIP's tokens keep where they are
                # from its position embeddings; the words alone let that fade here (docs/llava.md).
                cell = torch.arange(9, device=x.device).expand(x.size(0), 9)
                aux["cell_pos"] = F.cross_entropy(self.pos_head(x).flatten(0, 1).float(), cell.flatten())
                loss = loss + aux["cell_pos"]
        return logits, loss, aux

    def forward(self, tokens, targets=None, media=None):
        logits = self.decoder(self.embed(tokens, media))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss, {}

    @torch.no_grad()
    def generate(self, tokens, media=None, max_new_tokens=8, temperature=1.0, top_k=None):
        """Continue `tokens` (B, T) with a KV cache; temperature 0 is greedy. Rows run in lockstep
        (equal prompt lengths); everything after an <eos> is up to the caller to cut."""
        decoder = self.decoder
        B, T = tokens.shape
        caches = decoder.new_caches(B, T + max_new_tokens, decoder.emb.weight)
        logits = decoder(self.embed(tokens, media), caches, 0)[:, -1]
        out = []
        for i in range(max_new_tokens):
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits.float() / temperature
                if top_k:
                    kth = logits.topk(min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -float("inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1)[:, 0]
            out.append(nxt)
            if i + 1 < max_new_tokens:
                logits = decoder(decoder.emb(nxt[:, None]), caches, T + i)[:, -1]
        return torch.stack(out, 1)  # (B, max_new_tokens)

    def set_phase(self, name):
        """Freeze everything but the phase's parameter groups."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; nano_llava has {list(PHASES)}")
        for p in self.parameters():
            p.requires_grad = False
        for group in PHASES[name]["train"]:
            for p in getattr(self, group).parameters():
                p.requires_grad = True


# phase -> parameter groups that train, task mixture, and its default schedule (train.py flags
# override). 'vision' pre-trains the ViT with a linear head that names each cell's size, colour and
# shape: each answer is tied to its cell, so every object's attributes are learned, small ones too,
# and more cheaply than through a caption tower. 'instruct' takes many small steps, because finding
# the object a question names is learned mostly per update; its decoder blocks get a strong weight
# decay, the embeddings and the projector keep 0.1. The ablations are in docs/llava.md.
PHASES = {
    "text": dict(train=["decoder"], tasks={"text": 1.0}, steps=250, lr=3e-3, batch_size=64),
    "vision": dict(train=["encoder", "cell_head", "pos_head"], tasks={"cells": 1.0}, steps=500, lr=1.4e-3,
                   batch_size=64, objective="cell_words"),
    "align": dict(train=["projector"], tasks={"caption": 1.0}, steps=100, lr=2e-3, batch_size=64),
    "instruct": dict(train=["projector", "decoder"], tasks={"vqa_one": 1.0, "conversation": 2.0}, eval=["vqa"],
                     steps=5500, lr=3e-3, batch_size=16, weight_decay={"decoder.blocks": 1.0}),
}
