r"""nano_cogvlm.py: CogVLM in one file. Type B fusion: custom-layer deep fusion.

Paper: CogVLM, Visual Expert for Pretrained Language Models (arXiv 2311.03079). Fusion taxonomy:
arXiv 2405.17927, Type B: the language model's own layers are changed to take the image in. Here
every decoder layer gets a *visual expert*: image positions go through their own QKV, attention
output projection and FFN, while text positions keep the frozen LM's. Both attend in one softmax.

    image (N,3,64,64) -> resize 72 -> ViT over a 6x6 grid of 12px patches, last layer removed
                                          (N, 36, 128)       (sec 2.1: it specialises in the CLS)
                                                |  2x2 merge -> one token per cell of the 3x3 grid
                                                v
                                          (N, 9, 512) -> adapter: Linear, LayerNorm, GELU, SwiGLU
                                                v
          span per image: [boi] [patch x9] [eoi]   (N, 11, C), boi/eoi learned, zero-init
                                                |  written over the 11 <image> placeholders
    tokens (B, T) -> read as [bos][image spans][text]   (CogVLM's input layout, wherever <image> is)
                  -> embed (B, T, C) ---------> decoder layer x n_layer:
                                                  norm -> QKV     (text: LM's | image: expert's)
                                                  RoPE, one joint causal softmax (SDPA)
                                                       -> out proj (text: LM's | image: expert's)
                                                  norm -> SwiGLU  (text: LM's | image: expert's)
                                                -> norm -> head -> logits (B, T, vocab)
    RoPE positions: text ... p-1 | boi p | all patches p+1 | eoi p+2 | text p+3 ...

Reading order: Config -> rope / RMSNorm / MLP (the shared decoder recipe) -> Route (the token-type
mask) -> Attention / Block / Decoder (the LM, taking its experts as arguments) -> Expert -> ViT ->
Model (layout of the image span, embed, front, forward, generate, begin_phase) -> PHASES.

The training recipe (PHASES, run in order by train.py):
  text     decoder on text-only sentences and reading comprehension, in the conversation template
           too: the pre-trained LM (Vicuna-1.5, whose head is untied as here), then frozen for good
           (sec 2.2: "the LLM is frozen"). Every answer about an image it gives, it looks up.
  vision   ViT + two throw-away heads on the `cells` task: the pre-trained EVA2-CLIP. A linear head
           on the *kept* top layer names each cell's size, colour, shape and place; the layer that CogVLM
           removes reads the kept one (through a stop-gradient) and learns a global, CLS-like objective
           of its own (which words the picture's table holds): the specialised layer the paper drops.
  caption  CogVLM stage 1 (sec 2.2): expert + adapter + span embeddings on image captioning.
  vqa      stands for stage 2 / SFT (sec 2.2, 2.3): the same parameters on questions about images,
           single-object VQA and 4-question conversations 1:2 (measured: 0.728 against 0.620 on vqa
           alone, docs/cogvlm.md r3).

Simplified or changed: the ViT is tiny and trained here, with no CLS token (nothing pools it but
the dropped layer's head). A 2x2 merge of neighbouring patches (not in CogVLM, whose 224px images
give 256 tokens; CogVLM2 downsamples 2x2 too) gives one LM token per cell of the world's 3x3
grid, as in nano_llava. The adapter ends in an RMSNorm (adapter_norm; not in CogVLM) because
nano_llava measured that image tokens far above word scale stall a pre-norm decoder (docs/llava.md).
No referring-expression data, no EMA, no ViT unfreezing in SFT. The conversation template is
<bos> user <sep> assistant <eos>. The toy prompts name the image before or after the question;
the decoder reads every image right after <bos>, as CogVLM's input builder writes it (image_first:
r6's checkpoint answers 0.966 so, against 0.910 read as written; docs/cogvlm.md r8). Measurements:
docs/cogvlm.md.
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
    n_head: int = 4
    n_embd: int = 128
    mlp_hidden: int = 352          # SwiGLU hidden, ~8/3 n_embd; the expert's FFN has the same shape
    max_seq: int = 256
    rope_base: float = 10000.0
    emb_std: float = 0.1           # init std of the LM's word rows (embedding and head): docs/cogvlm.md, r5
    image_mask: str = "causal"     # "causal" among image tokens (the paper's, Table 4) or "full" within an image
    image_first: bool = True       # the decoder reads each row's images right after <bos>, as CogVLM's code builds it
    # vision encoder (72 px = 3 world cells x 2 x 12 px patches; after the 2x2 merge, one token per cell)
    image_size: int = 72
    patch: int = 12
    merge: int = 2                 # s x s neighbouring patches -> one token (1: off)
    vit_layers: int = 4            # trained in 'vision'; the LM reads the first vit_layers - 1 (sec 2.1)
    vit_embd: int = 128
    vit_heads: int = 4
    vit_mlp: int = 512
    adapter_norm: bool = True      # RMSNorm on the adapter's output: image tokens at a fixed scale
    word_scale: bool = True        # ... and that scale is the LM's words' (its gain set in begin_phase)
    bag_coef: float = 1.0          # weight of the dropped layer's global objective in 'vision'
    cell_pos: bool = True          # the cell head also names each token's cell (0..8): see cell_words

    def __post_init__(self):
        if self.n_embd % self.n_head or self.vit_embd % self.vit_heads:
            raise ValueError("n_embd must divide by n_head and vit_embd by vit_heads")
        if self.image_size % (self.patch * self.merge):
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch x merge ({self.patch} x {self.merge})")
        if self.image_mask not in ("causal", "full"):
            raise ValueError(f"image_mask must be 'causal' or 'full', got {self.image_mask!r}")
        if self.vit_layers < 2:
            raise ValueError("vit_layers must be at least 2: the last one is removed before the LM reads it")


# ----------------------------------------------------------------------------- the decoder recipe

def rope_table(head_dim, max_seq, base):
    """cos/sin of rotary position embeddings (RoFormer, arXiv 2104.09864), each (max_seq, head_dim/2)."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    ang = torch.outer(torch.arange(max_seq).float(), inv)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs of channels of x (B, H, T, hd) by cos/sin (B, 1, T, hd/2): one angle per row and
    position, since rows holding different numbers of images have different position ids."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (x1 + i x2): one complex multiply
    return torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2).type_as(x)  # rotates each pair


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


class MLP(nn.Module):
    """SwiGLU (arXiv 2002.05202): down(silu(gate(x)) * up(x))."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Route:
    """The token-type mask, a hard boolean like CogVLM's `vision_expert_mask` (not learned), turned
    once per forward into two index lists. A routed op runs the text module on text rows and the
    expert on image rows (each on its own rows only: no wasted FLOPs, no Python loop over tokens),
    then puts the rows back in sequence order. With no image the expert runs on an empty slice, so
    it still takes part in the step (the DDP rule)."""

    def __init__(self, image):  # image (B, T) bool
        self.shape = image.shape
        flat = image.flatten()
        self.txt, self.img = (~flat).nonzero().squeeze(1), flat.nonzero().squeeze(1)
        self.back = torch.cat([self.txt, self.img]).argsort()  # concatenated rows -> sequence order
        self.text_only = self.img.numel() == 0

    def __call__(self, x, text_fn, image_fn):  # x (B, T, D) -> (B, T, D')
        x = x.flatten(0, 1)
        if self.text_only:  # all text, already in order: no gathers (the 'text' phase, generated tokens)
            return torch.cat([text_fn(x), image_fn(x[:0])]).view(*self.shape, -1)
        # index_select, not x[idx]: the same rows, but its backward (index_add) is some 2x faster on CPU
        y = torch.cat([text_fn(x.index_select(0, self.txt)), image_fn(x.index_select(0, self.img))])
        return y.index_select(0, self.back).view(*self.shape, -1)


class Attention(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, expert, route, cos, sin, cache=None, start=0, mask=None):
        B, T, C = x.shape
        # paper eq. 1-3: Q = concat(X_I W_I, X_T W_T), likewise K and V, then one softmax over all
        qkv = route(x, self.qkv, expert.qkv)  # (B, T, 3C)
        q, k, v = qkv.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # 3x (B, H, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # the cache holds expert and LM keys alike: both are just keys now
            cache[0][:, :, start:start + T], cache[1][:, :, start:start + T] = k, v
            k, v = cache[0][:, :, :start + T], cache[1][:, :, :start + T]
        assert T == 1 or start == 0, "multi-token steps are only supported from position 0"
        if mask is None:  # causal over every position, image ones included (Table 4's better mask)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return route(y.transpose(1, 2).reshape(B, T, C), self.proj, expert.proj)


class Block(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)). The norms are the LM's for every token,
    as in CogVLM's code: the expert has QKV, output projection and FFN only."""

    def __init__(self, dim, n_head, hidden):
        super().__init__()
        self.norm1, self.attn = RMSNorm(dim), Attention(dim, n_head)
        self.norm2, self.mlp = RMSNorm(dim), MLP(dim, hidden)

    def forward(self, x, expert, route, cos, sin, cache=None, start=0, mask=None):
        x = x + self.attn(self.norm1(x), expert, route, cos, sin, cache, start, mask)
        return x + route(self.norm2(x), self.mlp, expert.mlp)  # eq. 5: FFN = concat(FFN_I(X_I), FFN_T(X_T))


class Decoder(nn.Module):
    """The language model: token embedding, blocks, final norm, head (untied, as Vicuna's lm_head). Its
    visual experts live outside it (Model.expert), so that "the LM" is one frozen parameter group."""

    def __init__(self, vocab, dim, n_layer, n_head, hidden, max_seq, rope_base):
        super().__init__()
        self.n_head = n_head
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, n_head, hidden) for _ in range(n_layer))
        self.norm = RMSNorm(dim)
        # untied, as Vicuna's: tied, the rows of words the toy corpus uses alike merge (white and
        # blue: cosine 0.97), and tied LMs read colour in words worse (docs/cogvlm.md, r4)
        self.head = nn.Linear(dim, vocab, bias=False)
        cos, sin = rope_table(dim // n_head, max_seq, rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x, pos, experts, route, caches=None, start=0, mask=None):
        """x (B, T, C), pos (B, T) rotary position ids -> logits (B, T, vocab)."""
        if start + x.size(1) > self.cos.size(0):
            raise ValueError(f"sequence of {start + x.size(1)} positions exceeds max_seq={self.cos.size(0)}")
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)  # (B, 1, T, hd/2)
        for i, (block, expert) in enumerate(zip(self.blocks, experts)):
            x = block(x, expert, route, cos, sin, caches[i] if caches else None, start, mask)
        return self.head(self.norm(x))

    def new_caches(self, B, T, like):
        hd = self.emb.weight.size(1) // self.n_head
        return [(like.new_zeros(B, self.n_head, T, hd), like.new_zeros(B, self.n_head, T, hd))
                for _ in self.blocks]


class Expert(nn.Module):
    """One layer's visual expert (sec 2.1, eq. 1-5): the LM layer's shapes, its own weights."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.mlp = MLP(dim, hidden)


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

    def forward(self, images):
        """images (N, 3, H, W) in [0, 1] -> the hidden states below the last block, (N, P, D): the
        last block is "removed" (sec 2.1) by never running it here; only 'vision' trains it."""
        if images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
        x = self.patch_embed(images * 2 - 1).flatten(2).transpose(1, 2) + self.pos  # (N, P, D)
        for block in self.blocks[:-1]:
            x = block(x)
        return x


# ----------------------------------------------------------------------------- the model

class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        C, s = cfg.n_embd, cfg.merge
        D = cfg.vit_embd * s * s  # a merged token's width
        self.encoder = ViT(cfg)
        self.decoder = Decoder(cfg.vocab_size, C, cfg.n_layer, cfg.n_head, cfg.mlp_hidden, cfg.max_seq, cfg.rope_base)
        self.expert = nn.ModuleList(Expert(C, cfg.mlp_hidden) for _ in range(cfg.n_layer))
        # the adapter, after CogVLM's GLU (utils/models/cogvlm_model.py): Linear (no bias), LayerNorm,
        # GELU, then a SwiGLU; boi/eoi are its learned span embeddings, zero-init as in the code
        self.adapter = nn.Module()
        self.adapter.inp = nn.Sequential(nn.Linear(D, C, bias=False), nn.LayerNorm(C), nn.GELU())
        self.adapter.glu = MLP(C, cfg.mlp_hidden)
        self.adapter.norm = RMSNorm(C) if cfg.adapter_norm else nn.Identity()
        self.adapter.boi, self.adapter.eoi = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        # the 'vision' phase's throw-away heads: each cell's own place (cell_pos) and its 3 words from
        # the kept top layer, and the bag of the table's words from the mean of the dropped layer (a
        # CLS-like, global objective)
        self.pos_head = nn.Linear(D, 9)
        self.cell_head = nn.Linear(D, 3 * cfg.vocab_size)
        self.bag_head = nn.Linear(cfg.vit_embd, cfg.vocab_size)
        self.n_patch = (cfg.image_size // cfg.patch // s) ** 2
        self.media_tokens = {"image": self.n_patch + 2}  # boi, patches, eoi
        self.apply(self._init)
        for name, p in self.named_parameters():  # scaled init of residual outputs (GPT-2)
            if name.endswith(("proj.weight", "mlp.down.weight")) and not name.startswith("encoder"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
        # words the toy corpus uses alike (red and yellow, which lack the same held-out shape) get
        # the same gradient everywhere but in a lookup's answer; rows that start far apart stay apart
        for w in (self.decoder.emb.weight, self.decoder.head.weight):
            nn.init.normal_(w, std=cfg.emb_std)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def patches(self, x):
        """(N, g*g, D) -> (N, (g/s)^2, D*s*s): each s x s block of neighbouring patches, one token."""
        s, (N, P, D) = self.cfg.merge, x.shape
        g = math.isqrt(P)
        x = x.view(N, g // s, s, g // s, s, D).permute(0, 1, 3, 2, 4, 5)  # (N, rows, cols, s, s, D)
        return x.reshape(N, (g // s) ** 2, s * s * D)

    def layout(self, tokens, n_img):
        """Where the image spans are: (j, span), each (B, T), j the index inside a span (0 = boi,
        1..P patches, P+1 = eoi) and span the image's number, both -1 on text."""
        S = self.media_tokens["image"]
        slots = tokens == self.cfg.image_id
        if int(slots.sum()) != n_img * S:
            raise ValueError(f"{int(slots.sum())} <image> placeholder positions but {n_img} images x {S} "
                             f"(boi + {S - 2} patches + eoi): expand each <image> marker to media_tokens['image']={S}")
        k = slots.flatten().long().cumsum(0).view_as(tokens) - 1  # placeholder number, row-major == item order
        j, span = torch.where(slots, k % S, -1), torch.where(slots, k // S, -1)
        prev = F.pad(j[:, :-1], (1, 0), value=-1)
        if not bool(((j <= 0) | (prev == j - 1)).all()):
            raise ValueError(f"each image needs {S} consecutive <image> placeholders in one row")
        return j, span

    def embed(self, tokens, media):
        """Embeddings with each image's span written over its placeholders, the expert mask, the
        rotary position ids (all patches of an image share one) and the attention mask."""
        media = media or {}
        if set(media) - {"image"}:
            raise ValueError(f"nano_cogvlm takes only images; got media {sorted(media)}")
        images = media.get("image")
        n_img = 0 if images is None else images.size(0)
        j, span = self.layout(tokens, n_img)
        S, P = self.media_tokens["image"], self.n_patch
        # a frozen encoder (every phase after 'vision') needs no graph
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.encoder.parameters())):
            feats = self.patches(self.encoder(images)) if n_img else self.decoder.emb.weight.new_zeros(
                0, P, self.cell_head.in_features)
        a = self.adapter
        feats = a.norm(a.glu(a.inp(feats)))  # (N, P, C); runs on an empty batch too (DDP)
        N, C = feats.size(0), feats.size(-1)
        spans = torch.cat([a.boi.expand(N, 1, C), feats, a.eoi.expand(N, 1, C)], 1)  # (N, S, C)
        x = self.decoder.emb(tokens).masked_scatter((j >= 0).unsqueeze(-1), spans.to(self.decoder.emb.weight.dtype))
        # the expert takes boi and patches; eoi goes through the LM's weights (CogVLM's vision_expert_mask)
        image = (j >= 0) & (j < S - 1)
        # position ids: each token 1 after the last, but patches 2..P repeat patch 1's (sec 2.1)
        pos = torch.where((j >= 2) & (j <= S - 2), 0, 1).cumsum(1) - 1
        mask = None
        if self.cfg.image_mask == "full" and n_img:  # bidirectional inside an image, causal elsewhere
            T = tokens.size(1)
            causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
            same = (span.unsqueeze(2) == span.unsqueeze(1)) & (span >= 0).unsqueeze(2)  # (B, T, T)
            mask = (causal | same).unsqueeze(1)  # (B, 1, T, T)
        return x, image, pos, mask

    def front(self, tokens, media):
        """The order (B, T) in which the decoder reads a row: with image_first, its first token (<bos>),
        then its image spans, then its text in its own order, since CogVLM's input builder always
        writes [bos] + image + text, wherever the prompt names the image (build_conversation_input_ids).
        So no text comes before the image and every question is asked of an image already read
        (docs/cogvlm.md r8). None when the order is the prompt's."""
        if not self.cfg.image_first or not bool((tokens == self.cfg.image_id).any()):
            return None
        images = (media or {}).get("image")
        self.layout(tokens, 0 if images is None else images.size(0))  # whole spans, in the prompt's order
        T = tokens.size(1)
        idx = torch.arange(T, device=tokens.device).expand_as(tokens)
        key = torch.where(tokens == self.cfg.image_id, idx - T, idx)  # placeholders before all text...
        key[:, 0] = -2 * T  # ...but after the row's first token; all keys distinct, so argsort is exact
        return key.argsort(1)

    def forward(self, tokens, targets=None, media=None):
        order = self.front(tokens, media)
        if order is not None:
            tokens = tokens.gather(1, order)
        x, image, pos, mask = self.embed(tokens, media)
        logits = self.decoder(x, pos, self.expert, Route(image), mask=mask)  # (B, T, vocab)
        if order is not None:  # back to the prompt's order, where the targets are
            logits = torch.empty_like(logits).scatter_(1, order.unsqueeze(-1).expand_as(logits), logits)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss, {}

    def cell_words(self, tokens, targets=None, media=None):
        """The 'vision' phase's objective (PHASES names it): logits (N, 27, vocab) of the 3 words that
        name each cell (size, colour, shape or "empty" x3), read by a linear head from the kept top
        layer, plus the dropped layer's bag-of-words term. Not autoregressive."""
        images = (media or {}).get("image")
        if images is None or images.size(0) != tokens.size(0):
            raise ValueError("the 'vision' phase takes one image per row (the `cells` task)")
        if self.n_patch != 9:
            raise ValueError("the 'vision' head names the 9 cells of the world's grid: it needs one merged token "
                             "per cell, image_size / (patch x merge) == 3")
        kept = self.encoder(images)  # (N, 36, D), the layers the LM will read
        cells = self.patches(kept)  # (N, 9, D)
        logits = self.cell_head(cells).reshape(cells.size(0), 27, -1)  # (N, 27, vocab)
        # the removed layer's job; detached, since its pull on the kept layers cost small shapes
        # (cell head, small: 0.896 with it, 0.990 without; docs/cogvlm.md, r5)
        bag = self.bag_head(self.encoder.blocks[-1](kept.detach()).mean(1))  # (N, vocab)
        loss, aux = None, {}
        if targets is not None:
            keep, n = targets != -100, logits.size(1)
            if not bool((keep.sum(1) == n + 1).all()):
                raise ValueError(f"the 'vision' phase trains on `cells` samples: {n} words and <eos> per row")
            words = targets[keep].view(-1, n + 1)[:, :n]  # the answer's words, <eos> dropped
            present = torch.zeros_like(bag).scatter_(1, words, 1.0)
            aux["bag"] = self.cfg.bag_coef * F.binary_cross_entropy_with_logits(
                bag.float(), present, reduction="sum") / (bag.size(0) * n)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), words.flatten()) + aux["bag"]
            if self.cfg.cell_pos:
                # each token also names its own cell: all patches of an image share one rotary
                # position in the LM (sec 2.1), so a token's place must travel in its content
                cell = torch.arange(9, device=cells.device).repeat(cells.size(0))
                aux["cell_pos"] = F.cross_entropy(self.pos_head(cells).flatten(0, 1).float(), cell)
                loss = loss + aux["cell_pos"]
        return logits, loss, aux

    @torch.no_grad()
    def generate(self, tokens, media=None, max_new_tokens=8, temperature=1.0, top_k=None):
        """Continue `tokens` (B, T) with a KV cache; temperature 0 is greedy. Rows run in lockstep
        (equal prompt lengths) but each keeps its own rotary position, since an image takes 3
        positions however many patches it has. Everything after an <eos> is the caller's to cut."""
        decoder = self.decoder
        B, T = tokens.shape
        caches = decoder.new_caches(B, T + max_new_tokens, decoder.emb.weight)
        order = self.front(tokens, media)
        x, image, pos, mask = self.embed(tokens if order is None else tokens.gather(1, order), media)
        logits = decoder(x, pos, self.expert, Route(image), caches, 0, mask)[:, -1]
        nxt_pos, text = pos[:, -1:] + 1, Route(torch.zeros(B, 1, dtype=torch.bool, device=tokens.device))
        out = []
        for i in range(max_new_tokens):
            logits[:, self.cfg.image_id] = -float("inf")  # a placeholder needs an image: never write one
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits.float() / temperature
                if top_k:
                    kth = logits.topk(min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -float("inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1)[:, 0]
            out.append(nxt)
            if i + 1 < max_new_tokens:  # generated tokens are text: the LM's weights
                logits = decoder(decoder.emb(nxt[:, None]), nxt_pos + i, self.expert, text, caches, T + i)[:, -1]
        return torch.stack(out, 1)  # (B, max_new_tokens)

    def set_phase(self, name):
        """Freeze everything but the phase's parameter groups."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; nano_cogvlm has {list(PHASES)}")
        for p in self.parameters():
            p.requires_grad = False
        for group in PHASES[name]["train"]:
            for p in getattr(self, group).parameters():
                p.requires_grad = True

    @torch.no_grad()
    def begin_phase(self, name):
        """Once, when the first phase that trains the expert starts: copy the (now pre-trained) LM's
        QKV, output projection and FFN into every layer's expert. The paper initialises the expert
        from the LM (sec 2.1), so training starts from exactly the LM on image positions too."""
        if name == "caption":
            for block, expert in zip(self.decoder.blocks, self.expert):
                expert.qkv.weight.copy_(block.attn.qkv.weight)
                expert.proj.weight.copy_(block.attn.proj.weight)
                expert.mlp.load_state_dict(block.mlp.state_dict())
            if self.cfg.adapter_norm and self.cfg.word_scale:
                # RMSNorm alone gives image tokens an RMS of 1, some 12x the trained word embeddings'
                # (0.08 at the default size), and the LM-initialised expert's updates hardly move them
                # (docs/cogvlm.md: test VQA 0.550 without this, 0.612 with it)
                self.adapter.norm.weight.fill_(self.decoder.emb.weight.pow(2).mean().sqrt())


# phase -> parameter groups that train, task mixture, and its default schedule (train.py flags
# override). The LM ('decoder') trains in 'text' only and is frozen from then on (sec 2.2); the ViT
# trains in 'vision' only. docs/cogvlm.md has the measurements behind the numbers.
PHASES = {
    # reading comprehension in the chat template, since every answer the frozen LM gives it looks up,
    # 4x as often as plain sentences (it reads better so: docs/cogvlm.md, r6); and `sizes`, without
    # which it never tells small from large (docs/cogvlm.md, r4). Its rows differ in length by 3x:
    # padded in 4 groups by length, a step takes 24% less time with the same gradient (r9)
    "text": dict(train=["decoder"], tasks={"text": 0.25, "read": 1.0, "sizes": 0.25}, eval=["read"], steps=500,
                 lr=3e-3, batch_size=64, length_groups=4),
    "vision": dict(train=["encoder", "cell_head", "pos_head", "bag_head"], tasks={"cells": 1.0}, steps=500,
                   lr=1.4e-3, batch_size=64, objective="cell_words"),
    "caption": dict(train=["expert", "adapter"], tasks={"caption": 1.0}, steps=200, lr=2e-3, batch_size=32),
    # judged on `vqa` (1-3 objects, one question) though trained on more answers per image: docs/cogvlm.md r3;
    # 3500 steps, not r6's 5000, since with image_first 3500 already reach 0.974 and the time bar binds (r8)
    "vqa": dict(train=["expert", "adapter"], tasks={"vqa_one": 1.0, "conversation": 2.0}, eval=["vqa"], steps=3500,
                lr=3e-3, batch_size=16),
}
