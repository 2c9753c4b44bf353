r"""nano_flamingo.py: Flamingo in one file. Type A fusion: deep fusion by gated cross-attention.

Paper: Flamingo, a Visual Language Model for Few-Shot Learning (arXiv 2204.14198). Fusion taxonomy:
arXiv 2405.17927, Type A: the visual features never enter the language model's input sequence; new
cross-attention layers, inserted between the frozen LM's blocks, read them from inside the LM.

    image (N,3,64,64) or video (N,F,3,H,W) -> frozen ViT, each frame alone -> (N, F, 36, Dv)
                                  + time_emb[f] (sec 3.1.1) + space_emb[p] (not in the paper)
                                  |  flattened to (N, F*36, Dv)
                                  v
                  Perceiver Resampler: L learned latents attend to concat(features, latents)
                                  |  (N, L, Dv): L tokens per item, whatever F and the patch count
                                  v
    tokens: <bos> <image> <sep> a red circle <eos> <image> <sep> ...   (one <image> position per item)
       embed (B, T, C) -> [GATED XATTN-DENSE -> frozen LM block] x n_layer -> logits
                           y += tanh(a_x) * XAttn(q=y, kv=visual of the last image before y)
                           y += tanh(a_d) * FFW(y)                 a_x = a_d = 0 at init: the LM itself

Reading order: Config -> rope / RMSNorm / Attention / MLP / Block / Decoder (the shared modern decoder
recipe, the frozen LM) -> ViT -> Resampler -> GatedXAttnDense -> Model (media_mask, visual, forward,
generate) -> PHASES.

The training recipe (PHASES, run in order by train.py):
  text     the decoder on text-only sentences and reading comprehension, in the human/gpt template too
           (so <sep> and the answer turn are known to the LM before it is frozen, and it can look an
           answer up in its context). Stands in for the pre-trained Chinchilla LM.
  vision   the ViT with a throw-away linear head that names the size, colour and shape in each cell
           of the 3x3 grid (`cells`). Stands in for the contrastively pre-trained NFNet (sec 3.1.1).
  mixture  sec 3.2-3.2.3: LM and ViT frozen; only the Resampler, the gated layers and the embeddings
           of the media markers train, on a weighted mixture of captions (ALIGN/LTIP's image-text
           pairs), VQA and interleaved multi-image documents (M3W). The weights are Config.mix.
A last phase that unfreezes the LM (as Idefics2, arXiv 2405.02246, does with LoRA) is not included:
Flamingo itself keeps the LM frozen, and the toy LM would forget its text (docs/flamingo.md).

Format (sec 3.2, App A.1.2): one <image> (or <video>) position per item; the pixels are read by the
cross-attention only. The end-of-chunk token <EOC> that ends each image's text is the gpt turn's <eos>
here (the collator's template already ends every chunk of text with it). <image> and <video> are new
to the LM, so their two embedding rows are a separate parameter (media_emb) that trains in `mixture`,
as OpenFlamingo trains its new tokens' rows; <sep> and <eos> are seen in `text`, so they stay frozen.

Simplified or changed relative to the paper: a tiny ViT trained here instead of an NFNet-F6; a
learned per-patch position embedding (space_emb) is added to the visual features before the
Resampler: the paper has none, since a conv net's features carry where they are, but this ViT's
features were pre-trained with a head that knew each cell by its slot, so without it the Resampler,
a set function, cannot tell where a shape is (docs/flamingo.md measures it); for the same reason
the 'vision' phase also trains each patch to name its own cell (cell_pos), so that where a patch is
lies in its content, which the Resampler's latents can keep; an optional per-patch code on the
Resampler's values (where_std, off by default) lets a latent carry where it looked at a scale the
read-out learns (docs/flamingo.md, r5); a gate_scale multiplier
lets the gates move faster than the rest (1.0: the paper's); the LM's head is untied from its
embedding, since tied the toy LM merges words its corpus uses alike (docs/flamingo.md, r2); Adam
with a cosine schedule instead of a constant rate; the dataset weights are sampling weights, not
per-dataset losses accumulated per step.
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
    video_id: int = 7
    eos_id: int = 2
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_hidden: int = 352          # SwiGLU hidden, ~8/3 n_embd
    max_seq: int = 256
    rope_base: float = 10000.0
    emb_std: float = 0.1           # init std of the LM's word rows (embedding and head): docs/flamingo.md
    # vision encoder: 72 px = 3 world cells x 2 x 12 px patches (the 'vision' head merges 2x2 patches
    # into one token per cell; the Resampler reads all 36 patches, the flattened grid of sec 3.1.1)
    image_size: int = 72
    patch: int = 12
    vit_layers: int = 3
    vit_embd: int = 128
    vit_heads: int = 4
    vit_mlp: int = 512
    max_frames: int = 8            # learned time embeddings (sec 3.1.1); an image is a 1-frame video
    space_emb: bool = True         # per-patch position embedding before the Resampler (not in the paper)
    where_std: float = 0.0         # init std of a per-patch code on the Resampler's values (0: off; not in the paper)
    cell_pos: bool = True          # 'vision' also trains each patch to name its own cell (see cell_words)
    # Perceiver Resampler (sec 3.1.1, Fig 4): runs at the ViT's width
    n_latents: int = 16
    resampler_layers: int = 2
    # gated cross-attention layers (sec 3.1.2, Fig 5)
    xattn_every: int = 1           # a GATED XATTN-DENSE before every k-th LM block (3B: 1, 9B: 4, 80B: 7)
    xattn_heads: int = 4
    xattn_ffw: int = 4             # FFW width, times n_embd (Squared-ReLU, as in the paper)
    media_mask: str = "last"       # "last": image-causal (sec 3.1.3); "all": every previous image (ablation)
    gate_scale: float = 1.0        # gate = tanh(gate_scale * a): with Adam, the gates' rate x gate_scale
    # the mixture's dataset weights (sec 3.2.3), "task:weight,...": PHASES["mixture"] names this field.
    # Adding text:1 (M3W is mostly text) keeps the gated FFW harmless on text (text test loss 0.67
    # instead of 1.59) but costs VQA 0.652 -> 0.576 (docs/flamingo.md): the bars are VQA, so not default
    mix: str = "caption:1,vqa:2,interleaved:2"

    def __post_init__(self):
        if self.n_embd % self.n_head or self.vit_embd % self.vit_heads or self.n_embd % self.xattn_heads:
            raise ValueError("n_embd must divide by n_head and xattn_heads, vit_embd by vit_heads")
        if self.image_size % (2 * self.patch):
            raise ValueError(f"image_size {self.image_size} must be a multiple of 2 x patch ({self.patch})")
        if self.media_mask not in ("last", "all"):
            raise ValueError(f"media_mask must be 'last' or 'all', got {self.media_mask!r}")
        if not 1 <= self.xattn_every <= self.n_layer:
            raise ValueError(f"xattn_every must be in [1, n_layer={self.n_layer}], got {self.xattn_every}")


# ----------------------------------------------------------------------------- the decoder recipe

def rope_table(head_dim, max_seq, base):
    """cos/sin of rotary position embeddings (RoFormer, arXiv 2104.09864), each (max_seq, head_dim/2)."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    ang = torch.outer(torch.arange(max_seq).float(), inv)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    """Rotate channel pairs of x (B, H, T, hd) by angles that grow with the position."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


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
        if cache is not None:  # write this step's keys/values, then attend to everything so far
            cache[0][:, :, pos:pos + T], cache[1][:, :, pos:pos + T] = k, v
            k, v = cache[0][:, :, :pos + T], cache[1][:, :, :pos + T]
        assert T == 1 or pos == 0, "multi-token steps only from position 0 (a prefill)"
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)  # one new token may see all the cache
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
    """The language model: token embedding, blocks, final norm, untied head. forward is
    the plain LM; Model.run interleaves the gated layers with these same blocks."""

    def __init__(self, vocab, dim, n_layer, n_head, hidden, max_seq, rope_base):
        super().__init__()
        self.n_head = n_head
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, n_head, hidden) for _ in range(n_layer))
        self.norm = RMSNorm(dim)
        # untied: tied, the rows of words the toy corpus uses alike merge (white and blue) and the
        # frozen LM confuses them when it answers (docs/cogvlm.md, r4, measured on CogVLM's LM)
        self.out = nn.Linear(dim, vocab, bias=False)
        cos, sin = rope_table(dim // n_head, max_seq, rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def rope(self, pos, T):
        if pos + T > self.cos.size(0):
            raise ValueError(f"sequence of {pos + T} positions exceeds max_seq={self.cos.size(0)}")
        return self.cos[pos:pos + T], self.sin[pos:pos + T]

    def head(self, x):  # (B, T, C) -> (B, T, vocab)
        return self.out(self.norm(x))

    def forward(self, x):  # x (B, T, C) embeddings -> logits
        cos, sin = self.rope(0, x.size(1))
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(x)

    def new_caches(self, B, T, like):
        hd = self.emb.weight.size(1) // self.n_head
        return [(like.new_zeros(B, self.n_head, T, hd), like.new_zeros(B, self.n_head, T, hd)) for _ in self.blocks]


# ----------------------------------------------------------------------------- vision encoder

class ViTBlock(nn.Module):
    """A pre-LayerNorm ViT block (arXiv 2010.11929): bidirectional attention, GELU MLP."""

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
        self.norm = nn.LayerNorm(cfg.vit_embd)

    def forward(self, images):
        """images (N, 3, H, W) in [0, 1] -> patch features (N, P, D), the grid flattened row by row."""
        if images.shape[-2:] != (self.size, self.size):  # videos are 32 px: resized like CLIP's pre-processing
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
        x = self.patch_embed(images * 2 - 1).flatten(2).transpose(1, 2) + self.pos  # (N, P, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ----------------------------------------------------------------------------- the new layers

def merge_patches(x, s):
    """(N, g*g, D) -> (N, (g/s)^2, s*s*D): each s x s block of neighbouring patches becomes one token."""
    N, P, D = x.shape
    g = math.isqrt(P)
    x = x.view(N, g // s, s, g // s, s, D).permute(0, 1, 3, 2, 4, 5)  # (N, rows, cols, s, s, D)
    return x.reshape(N, (g // s) ** 2, s * s * D)


def patch_cells(g):
    """(g*g,): the 3x3 world cell of each patch of a g x g grid, in reading order (g = 6: 2x2 patches a cell)."""
    r = torch.arange(g) * 3 // g
    return (r[:, None] * 3 + r[None, :]).flatten()


def squared_relu(x):  # the FFW activation of the Resampler and the gated layers (App B, Table 13)
    return F.relu(x).square()


class FFW(nn.Module):
    def __init__(self, dim, mult):
        super().__init__()
        self.norm, self.up = nn.LayerNorm(dim), nn.Linear(dim, mult * dim, bias=False)
        self.down = nn.Linear(mult * dim, dim, bias=False)

    def forward(self, x):
        return self.down(squared_relu(self.up(self.norm(x))))


class Resampler(nn.Module):
    """Perceiver Resampler (sec 3.1.1, Fig 4): n_latents learned queries; at each layer their keys and
    values are concat(visual features, latents), then an FFW, both residual. Its output has n_latents
    tokens for any number of frames and patches, so the gated layers' cost does not grow with them."""

    def __init__(self, cfg):
        super().__init__()
        D, self.n_head = cfg.vit_embd, cfg.vit_heads
        self.latents = nn.Parameter(torch.randn(cfg.n_latents, D) * 0.02)
        self.time_emb = nn.Parameter(torch.randn(cfg.max_frames, 1, D) * 0.02)  # (F, 1, D), per frame
        n_patch = (cfg.image_size // cfg.patch) ** 2
        self.space_emb = nn.Parameter(torch.randn(n_patch, D) * 0.02) if cfg.space_emb else None  # (P, D)
        self.layers = nn.ModuleList(nn.ModuleDict(dict(
            norm_x=nn.LayerNorm(D), norm_q=nn.LayerNorm(D), q=nn.Linear(D, D, bias=False),
            kv=nn.Linear(D, 2 * D, bias=False), out=nn.Linear(D, D, bias=False), ffw=FFW(D, 4)))
            for _ in range(cfg.resampler_layers))
        self.norm = nn.LayerNorm(D)
        # A latent's attention tells it *what* it looked at; a per-patch code added to the values (not
        # the keys) tells it *where*. Without it the place is 1.5% of the latents' variance and the
        # read-out does not learn it; with std 0.5, a third (docs/flamingo.md, r5)
        self.where = nn.Parameter(torch.randn(n_patch, D) * cfg.where_std) if cfg.where_std else None

    def forward(self, x):  # x (N, F, P, D) frame features -> (N, n_latents, D)
        N, Fr, P, D = x.shape
        if Fr > self.time_emb.size(0):
            raise ValueError(f"{Fr} frames, but max_frames={self.time_emb.size(0)} time embeddings")
        x = x + self.time_emb[:Fr]
        if self.space_emb is not None:
            x = x + self.space_emb
        x = x.flatten(1, 2)  # (N, F*P, D): frames and patches are one set to attend over
        lat = self.latents.expand(N, -1, -1)  # (N, L, D)
        H, hd, L = self.n_head, D // self.n_head, lat.size(1)
        where = 0
        if self.where is not None:  # (H, F*P+L, hd): each patch's code, nothing on the latents' own values
            where = F.pad(self.where.repeat(Fr, 1), (0, 0, 0, L)).view(-1, H, hd).transpose(0, 1)
        for layer in self.layers:
            q = layer["q"](layer["norm_q"](lat)).view(N, L, H, hd).transpose(1, 2)  # (N, H, L, hd)
            kv = torch.cat([layer["norm_x"](x), layer["norm_q"](lat)], 1)  # latents also attend to themselves
            k, v = layer["kv"](kv).view(N, kv.size(1), 2, H, hd).permute(2, 0, 3, 1, 4)  # 2x (N, H, F*P+L, hd)
            att = F.scaled_dot_product_attention(q, k, v + where)  # (N, H, L, hd)
            lat = lat + layer["out"](att.transpose(1, 2).reshape(N, L, D))
            lat = lat + layer["ffw"](lat)
        return self.norm(lat)


class GatedXAttnDense(nn.Module):
    """GATED XATTN-DENSE (sec 3.1.2, Fig 5): y += tanh(a_x) * XAttn(q=y, kv=visual); y += tanh(a_d) * FFW(y).
    Both gates start at 0, so the frozen LM's behaviour is intact at initialisation and training
    opens the new path gradually (Fig 7 of the paper: the gates' values grow with depth)."""

    def __init__(self, cfg):
        super().__init__()
        C, D, self.n_head, self.scale = cfg.n_embd, cfg.vit_embd, cfg.xattn_heads, cfg.gate_scale
        self.norm_q, self.norm_kv = nn.LayerNorm(C), nn.LayerNorm(D)
        self.q, self.kv = nn.Linear(C, C, bias=False), nn.Linear(D, 2 * C, bias=False)
        self.out = nn.Linear(C, C, bias=False)
        self.ffw = FFW(C, cfg.xattn_ffw)
        self.attn_gate, self.ffw_gate = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))

    def gates(self):
        return torch.tanh(self.scale * self.attn_gate), torch.tanh(self.scale * self.ffw_gate)

    def keys_values(self, visual):  # (B, K, D) -> 2x (B, H, K, hd): computed once per generate (the cache)
        B, K, _ = visual.shape
        return self.kv(self.norm_kv(visual)).view(B, K, 2, self.n_head, -1).permute(2, 0, 3, 1, 4)

    def forward(self, y, kv, mask, seen):  # y (B, T, C); mask (B, 1, T, K); seen (B, T, 1)
        B, T, C = y.shape
        q = self.q(self.norm_q(y)).view(B, T, self.n_head, -1).transpose(1, 2)  # (B, H, T, hd)
        att = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        # a token before any image attends to nothing: its row of the mask was opened only to avoid
        # a softmax over no keys (NaN); its output is zeroed here, after the softmax
        att = att.transpose(1, 2).reshape(B, T, C) * seen
        g_x, g_d = self.gates()
        y = y + g_x * self.out(att)
        return y + g_d * self.ffw(y)


# ----------------------------------------------------------------------------- the model

class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = ViT(cfg)
        self.resampler = Resampler(cfg)
        self.decoder = Decoder(cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.mlp_hidden, cfg.max_seq,
                               cfg.rope_base)
        self.xattn = nn.ModuleList(GatedXAttnDense(cfg) for _ in range(0, cfg.n_layer, cfg.xattn_every))
        self.media_emb = nn.Parameter(torch.randn(2, cfg.n_embd) * cfg.emb_std)  # the <image>, <video> rows
        self.cell_head = nn.Linear(4 * cfg.vit_embd, 3 * cfg.vocab_size)  # 'vision' phase only
        self.pos_head = nn.Linear(cfg.vit_embd, 9)  # 'vision' phase only: which cell a patch is in
        self.media_tokens = {"image": 1, "video": 1}
        self.apply(self._init)
        for name, p in self.named_parameters():  # scaled init of residual outputs (GPT-2)
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
        # words the toy corpus uses alike (red and yellow) stay apart only if their rows start apart
        for w in (self.decoder.emb.weight, self.decoder.out.weight):
            nn.init.normal_(w, std=cfg.emb_std)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    # -- media

    def visual(self, tokens, media):
        """Resampled media per row, (B, M, L, D) with M the most items in a row (zeros pad the rest),
        and phi (B, T): per token, the 1-based index in its row of the last item at or before it
        (0: none yet). The <image> token sees its own image, as in OpenFlamingo."""
        media, cfg = media or {}, self.cfg
        if set(media) - {"image", "video"}:
            raise ValueError(f"nano_flamingo takes images and videos; got media {sorted(media)}")
        ids = {"image": cfg.image_id, "video": cfg.video_id}
        marks = (tokens == cfg.image_id) | (tokens == cfg.video_id)  # (B, T)
        kinds = tokens[marks]  # marker ids in row-major order: the order items are packed in
        L, D = cfg.n_latents, cfg.vit_embd
        items = self.media_emb.new_zeros(kinds.numel(), L, D)
        for m, i in ids.items():
            x = media.get(m)
            n = 0 if x is None else x.size(0)
            if int((kinds == i).sum()) != n:
                raise ValueError(f"{int((kinds == i).sum())} <{m}> markers but {n} {m} items: write one <{m}> "
                                 f"position per item (media_tokens['{m}'] = 1)")
            if n:
                frames = x.unsqueeze(1) if m == "image" else x  # an image is a 1-frame video, (N, F, 3, H, W)
                feats = self.encoder(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])  # (N, F, P, D)
                items[kinds == i] = self.resampler(feats).to(items.dtype)
        if not kinds.numel():  # no media: the Resampler runs on an empty batch, still part of the step (DDP)
            items = self.resampler(items.new_zeros(0, 1, (cfg.image_size // cfg.patch) ** 2, D))
        count = marks.sum(1)  # (B,)
        M = max(int(count.max()) if count.numel() else 0, 1)
        padded = items.new_zeros(tokens.size(0), M, L, D)
        padded[torch.arange(M, device=tokens.device) < count[:, None]] = items
        return padded, marks.cumsum(1)

    def media_mask(self, phi, M):
        """phi (B, T) -> the cross-attention mask (B, 1, T, M*L) and seen (B, T, 1) (sec 3.1.3, Fig 6).
        Image-causal: a token attends to the L tokens of image phi only; "all": to images 1..phi."""
        item = torch.arange(1, M + 1, device=phi.device).repeat_interleave(self.cfg.n_latents)  # (M*L,)
        p = phi[..., None]  # (B, T, 1)
        mask = item == p if self.cfg.media_mask == "last" else item <= p  # (B, T, M*L)
        seen = p > 0
        return (mask | ~seen)[:, None], seen.to(self.media_emb.dtype)

    def embed(self, tokens):
        """Token embeddings, the media markers' rows from media_emb (the only decoder rows that train)."""
        x = self.decoder.emb(tokens)  # (B, T, C)
        x = torch.where((tokens == self.cfg.image_id)[..., None], self.media_emb[0].to(x.dtype), x)
        return torch.where((tokens == self.cfg.video_id)[..., None], self.media_emb[1].to(x.dtype), x)

    def run(self, x, kvs, mask, seen, caches=None, pos=0):
        """The frozen LM's blocks with a gated layer before every xattn_every-th: (B, T, C) -> logits."""
        dec, k = self.decoder, self.cfg.xattn_every
        cos, sin = dec.rope(pos, x.size(1))
        for i, block in enumerate(dec.blocks):
            if i % k == 0:
                x = self.xattn[i // k](x, kvs[i // k], mask, seen)
            x = block(x, cos, sin, caches[i] if caches else None, pos)
        return dec.head(x)

    def forward(self, tokens, targets=None, media=None):
        visual, phi = self.visual(tokens, media)  # (B, M, L, D), (B, T)
        flat = visual.flatten(1, 2)  # (B, M*L, D)
        mask, seen = self.media_mask(phi, visual.size(1))
        logits = self.run(self.embed(tokens), [g.keys_values(flat) for g in self.xattn], mask, seen)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss, {}

    def cell_words(self, tokens, targets=None, media=None):
        """The 'vision' phase's objective (PHASES names it): from the ViT's patches, 2x2 neighbours merged
        into one token per grid cell, a linear head names the 3 words (size, colour, shape, or
        "empty" x3) of each cell: logits (N, 27, vocab) in the `cells` task's order, and their loss."""
        images = (media or {}).get("image")
        if images is None or images.size(0) != tokens.size(0):
            raise ValueError("the 'vision' phase takes one image per row (the `cells` task)")
        x = self.encoder(images)  # (N, P, D)
        N, P, D = x.shape
        if P != 36:
            raise ValueError("the 'vision' head names the 3x3 cells of the world: it needs a 6x6 patch grid")
        cellwise = merge_patches(x, 2)  # (N, 9, 4D)
        logits = self.cell_head(cellwise).view(N, 27, -1)  # (N, 27, vocab)
        loss, aux = None, {}
        if targets is not None:
            keep = targets != -100
            if not bool((keep.sum(1) == 28).all()):
                raise ValueError("the 'vision' phase trains on `cells` samples: 27 words and <eos> per row")
            words = targets[keep].view(N, 28)[:, :27]
            loss = F.cross_entropy(logits.flatten(0, 1).float(), words.flatten())
            if self.cfg.cell_pos:
                # Each patch also names the cell it lies in, so its feature carries its place in its
                # content: the Resampler is a set function and its latents can keep only what the
                # features hold. (The cell head alone knows a cell by its slot, and lets that fade.)
                cell = patch_cells(6).to(x.device).expand(N, 36)  # (N, 36): patch -> its cell
                aux["cell_pos"] = F.cross_entropy(self.pos_head(x).flatten(0, 1).float(), cell.flatten())
                loss = loss + aux["cell_pos"]
        return logits, loss, aux

    @torch.no_grad()
    def generate(self, tokens, media=None, max_new_tokens=8, temperature=1.0, top_k=None):
        """Continue `tokens` (B, T) with a KV cache; temperature 0 is greedy. The gated layers' keys and
        values of the visual tokens are computed once, in the prefill, and reused at every step.
        A new token's last image is the prompt's last (no media is generated)."""
        B, T = tokens.shape
        visual, phi = self.visual(tokens, media)
        kvs = [g.keys_values(visual.flatten(1, 2)) for g in self.xattn]  # the cross-attention cache
        mask, seen = self.media_mask(phi, visual.size(1))
        caches = self.decoder.new_caches(B, T + max_new_tokens, self.media_emb)
        logits = self.run(self.embed(tokens), kvs, mask, seen, caches, 0)[:, -1]
        step_mask, step_seen = mask[:, :, -1:], seen[:, -1:]  # (B, 1, 1, M*L), (B, 1, 1)
        out = []
        for i in range(max_new_tokens):
            logits[:, [self.cfg.image_id, self.cfg.video_id]] = -float("inf")  # no media is generated
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
                logits = self.run(self.embed(nxt[:, None]), kvs, step_mask, step_seen, caches, T + i)[:, -1]
        return torch.stack(out, 1)  # (B, max_new_tokens)

    @torch.no_grad()
    def diagnostics(self):
        """tanh of each gated layer's gates (Fig 7 of the paper plots these against depth)."""
        out = {}
        for i, g in enumerate(self.xattn):
            g_x, g_d = g.gates()
            out[f"tanh_attn_gate/{i * self.cfg.xattn_every}"] = float(g_x)
            out[f"tanh_ffw_gate/{i * self.cfg.xattn_every}"] = float(g_d)
        return out

    def begin_phase(self, name):
        """At the mixture's fresh start the marker rows take the LM's own (never trained) rows, so that
        before any step the model computes exactly what the frozen LM computes on the same ids."""
        if name == "mixture":
            with torch.no_grad():
                self.media_emb.copy_(self.decoder.emb.weight[[self.cfg.image_id, self.cfg.video_id]])

    def set_phase(self, name):
        """Freeze everything but the phase's parameter groups."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; nano_flamingo has {list(PHASES)}")
        for p in self.parameters():
            p.requires_grad = False
        for group in PHASES[name]["train"]:
            for p in [getattr(self, group)] if group == "media_emb" else getattr(self, group).parameters():
                p.requires_grad = True


# phase -> parameter groups that train, task mixture, and its default schedule (train.py flags override).
# 'mixture' names the Config field that holds its task weights (tasks="mix"), so --mix changes the data.
# Weight decay 0 on the Resampler as in sec 4.1.4; the gates are scalars and never decay. (Shorter text
# and vision phases, tried for the 10-minute bar, cost VQA: docs/flamingo.md, "The cell_pos round".)
PHASES = {
    # reading comprehension in the chat template too, since every answer the frozen LM gives it looks
    # up; and `sizes`, without which it never tells small from large (docs/cogvlm.md, r4); padded in 4
    # groups by length, a step takes 27% less time with the same gradient (docs/flamingo.md, r4)
    "text": dict(train=["decoder"], tasks={"text": 1.0, "read": 1.0, "sizes": 0.25}, eval=["read"], steps=600,
                 lr=3e-3, batch_size=64, length_groups=4),
    "vision": dict(train=["encoder", "cell_head", "pos_head"], tasks={"cells": 1.0}, steps=500, lr=1.4e-3,
                   batch_size=64, objective="cell_words"),
    "mixture": dict(train=["resampler", "xattn", "media_emb"], tasks="mix",
                    eval=["vqa", "interleaved", "interleaved_long"], steps=1500, lr=1e-3, batch_size=32,
                    weight_decay={"resampler": 0.0}),
}
