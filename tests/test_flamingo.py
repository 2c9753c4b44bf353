"""nano_flamingo: what is particular to Flamingo (arXiv 2204.14198). The contract (tests/test_contract.py)
covers shapes, causality, the DDP rule, strict loading and the KV cache in general.

- zero gates give the frozen language model exactly (sec 3.1.2);
- the mixture phase changes no weight of the frozen LM or ViT (sec 3.2.3);
- the image-causal mask (sec 3.1.3): a token cross-attends to the last image before it only, a token
  before any image to nothing, and the "all previous images" ablation to images 1..last;
- the Perceiver Resampler returns n_latents tokens whatever the frames and patches (sec 3.1.1), and
  the where code on its values tells a latent where it looked, which a set function cannot;
- generation caches the cross-attention keys/values once and still equals recomputation.
"""
import math

import pytest
import torch

import bench
import nano_flamingo as FL
import train
from data import Collator, Mixture, Tokenizer

TOK = Tokenizer()
TINY = bench.SIZES["tiny"]["flamingo"]["config"]


def make(phase="mixture", gates=0.0, **kw):
    torch.manual_seed(0)
    m = FL.Model(train.build_config(FL, TOK, {**TINY, **kw}))
    m.set_phase(phase)
    with torch.no_grad():
        for g in m.xattn:
            g.attn_gate.fill_(math.atanh(gates)), g.ffw_gate.fill_(math.atanh(gates))
    return m.eval()


def batch(task, n=4, split="train"):
    ds = Mixture({task: 1.0}, split, 100)
    return Collator(TOK, {"image": 1, "video": 1})([ds[i] for i in range(n)])


def doc(n_images=3, first_words="what is there"):
    """One interleaved document: text first, then n images each with a caption, as a (1, T) batch."""
    turns = [first_words] + [t for k in range(n_images) for t in ("<image>", f"a red circle {k}")]
    sample = {"id": "doc", "task": "interleaved", "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": v}
                                             for i, v in enumerate(turns + ["where was it?"])],
              "media": [{"type": "image", "data": Mixture({"vqa": 1.0}, "train", 10)[k]["media"][0]["data"]}
                        for k in range(n_images)]}
    b = Collator(TOK, {"image": 1, "video": 1})([sample])
    return b["tokens"], b["media"]


def xattn_delta(model, tokens, media):
    """What the first gated layer adds to each position, (B, T, C): before it, nothing has mixed positions,
    so this is the cross-attention (and FFW) of each token on its own."""
    seen = {}
    h = model.xattn[0].register_forward_hook(lambda mod, args, out: seen.update(d=out - args[0]))
    with torch.no_grad():
        model(tokens, None, media)
    h.remove()
    return seen["d"]


def with_image(media, j, seed=5):
    images = media["image"].clone()
    images[j] = torch.rand(images[j].shape, generator=torch.Generator().manual_seed(seed))
    return {"image": images}


@pytest.mark.parametrize("task", ["vqa", "interleaved", "text"])
def test_zero_gates_are_the_frozen_language_model_exactly(task):
    """At the mixture's start (gates 0, marker rows copied from the LM) the logits are bit for bit the LM's."""
    m = make()
    m.begin_phase("mixture")
    b = batch(task)
    with torch.no_grad():
        ours = m(b["tokens"], None, b["media"])[0]
        lm = m.decoder(m.decoder.emb(b["tokens"]))
    assert torch.equal(ours, lm)


def test_mixture_phase_leaves_the_frozen_lm_and_vit_untouched():
    """A few optimizer steps of the mixture (weight decay on): LM and ViT weights are unchanged, the
    Resampler, the gated layers and the marker rows have moved."""
    m = make()
    m.begin_phase("mixture")
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = train.make_optimizer(m, 1e-2, 0.1, 0.95, "cpu", FL.PHASES["mixture"]["weight_decay"])
    for task in ("vqa", "interleaved", "caption"):
        b = batch(task)
        m(b["tokens"], b["targets"], b["media"])[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = m.state_dict()
    frozen = [k for k in before if k.startswith(("decoder.", "encoder.", "cell_head.", "pos_head."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    for group in ("resampler.", "xattn.", "media_emb"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(group)), group
    assert all(abs(v) > 0 for v in m.diagnostics().values())  # the gates opened


@pytest.mark.parametrize("j", [0, 1, 2])
def test_changing_image_j_reaches_by_cross_attention_only_the_tokens_after_it(j):
    """Image-causal (sec 3.1.3): the cross-attention output of a token whose last image is not j does not
    depend on image j. Later tokens still see image j through the LM's self-attention, as in the paper,
    so in the full logits only the tokens before image j are untouched."""
    m = make(gates=0.5)
    tokens, media = doc()
    phi = (tokens == TOK.image).cumsum(1)[0]  # (T,) 1-based last image
    d0, d1 = xattn_delta(m, tokens, media), xattn_delta(m, tokens, with_image(media, j))
    own = phi == j + 1
    assert torch.equal(d0[0, ~own], d1[0, ~own])
    assert (d0[0, own] - d1[0, own]).abs().amax(-1).min() > 0  # every token of image j is changed
    with torch.no_grad():
        l0, l1 = m(tokens, None, media)[0], m(tokens, None, with_image(media, j))[0]
    before = phi <= j
    assert torch.equal(l0[0, before], l1[0, before]) and not torch.equal(l0[0, ~before], l1[0, ~before])


def test_tokens_before_the_first_image_are_untouched_by_any_image():
    """They attend to nothing (output zeroed after the softmax, never NaN): equal to the LM alone."""
    m = make(gates=0.5)
    tokens, media = doc(first_words="what colour is the circle")
    first = int((tokens[0] == TOK.image).nonzero()[0])
    noise = {"image": torch.rand(media["image"].shape, generator=torch.Generator().manual_seed(1))}
    with torch.no_grad():
        l0, l1 = m(tokens, None, media)[0], m(tokens, None, noise)[0]
    assert torch.isfinite(l0).all()
    assert torch.equal(l0[0, :first], l1[0, :first])
    with torch.no_grad():  # what the first gated layer adds there is its FFW alone: no visual term
        ffw_only = m.xattn[0].ffw_gate.tanh() * m.xattn[0].ffw(m.embed(tokens))[0, :first]
    assert torch.allclose(xattn_delta(m, tokens, media)[0, :first], ffw_only, atol=1e-6)


@pytest.mark.parametrize("mode", ["last", "all"])
def test_token_after_image_2_attends_to_image_2_only(mode):
    """The mask row of the token right after the 2nd <image>: image 2's latents ('last'), or images 1 and 2
    ('all', the paper's ablation); behaviourally, its cross-attention changes with exactly those images."""
    m = make(gates=0.5, media_mask=mode)
    tokens, media = doc()
    t = int((tokens[0] == TOK.image).nonzero()[1]) + 1
    visual, phi = m.visual(tokens, media)
    mask, seen = m.media_mask(phi, visual.size(1))
    L = m.cfg.n_latents
    item = torch.arange(mask.size(-1)) // L  # 0-based image of each key
    want = item == 1 if mode == "last" else item <= 1
    assert torch.equal(mask[0, 0, t], want) and bool(seen[0, t])
    d = xattn_delta(m, tokens, media)[0, t]
    for j in range(3):
        moved = not torch.equal(d, xattn_delta(m, tokens, with_image(media, j))[0, t])
        assert moved == bool(want[j * L]), (mode, j)


def test_resampler_returns_n_latents_tokens_for_any_frames_and_patches():
    for space in (False, True):  # per-patch codes (space_emb, where_std) fix the patch count
        m = make(space_emb=space, where_std=0.5 if space else 0.0)
        P, width = (m.cfg.image_size // m.cfg.patch) ** 2, m.cfg.vit_embd
        for frames in (1, 3, m.cfg.max_frames):
            for patches in ([P] if space else [4, P, 100]):
                out = m.resampler(torch.randn(2, frames, patches, width))
                assert out.shape == (2, m.cfg.n_latents, m.cfg.vit_embd)
    with pytest.raises(ValueError):
        m.resampler(torch.randn(1, m.cfg.max_frames + 1, P, width))


def test_where_code_tells_a_latent_where_it_looked():
    """With no place in the keys (space_emb off) the Resampler is a set function: the same features
    moved to other patches give the same latents. The where code on the values breaks that, so a
    latent carries where the patches it read lie (docs/flamingo.md, r5)."""
    for where in (0.0, 0.5):
        m = make(space_emb=False, where_std=where)
        P = (m.cfg.image_size // m.cfg.patch) ** 2
        x = torch.randn(2, 1, P, m.cfg.vit_embd, generator=torch.Generator().manual_seed(0))
        moved = x[:, :, torch.randperm(P, generator=torch.Generator().manual_seed(1))]
        with torch.no_grad():
            same = torch.allclose(m.resampler(x), m.resampler(moved), atol=1e-5)
        assert same == (where == 0.0), where


@pytest.mark.parametrize("mode", ["last", "all"])
def test_generation_caches_cross_attention_and_equals_recomputation(mode, monkeypatch):
    """The gated layers compute the visual keys/values once per generate (the prefill), and greedy
    decoding equals re-running forward, for rows of 1 and 3 images."""
    m = make(gates=0.9, media_mask=mode)
    torch.manual_seed(1)
    with torch.no_grad():  # an untrained model repeats one token: make the context matter
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    col = Collator(TOK, m.media_tokens)
    rows = []
    for k in (1, 3):
        items = [Mixture({"vqa": 1.0}, "train", 10)[i]["media"][0] for i in range(k)]
        rows.append({"id": str(k), "conversations": [{"from": "human", "value": "".join(["<image>"] * k)
                                                      + " what colour is the circle?" + " the" * (3 - k)}], "media": items})
    ids, media = torch.tensor([col.encode(r)[0] for r in rows]), col.pack_media(rows)
    calls = []
    real = FL.GatedXAttnDense.keys_values
    monkeypatch.setattr(FL.GatedXAttnDense, "keys_values", lambda self, v: calls.append(1) or real(self, v))
    gen = m.generate(ids, media, max_new_tokens=8, temperature=0)
    assert len(calls) == len(m.xattn)  # once per gated layer, not once per step
    assert len(set(gen.flatten().tolist())) > 2
    seq = ids
    with torch.no_grad():
        for _ in range(8):
            last = m(seq, None, media)[0][:, -1]
            last[:, [TOK.image, TOK.video]] = -float("inf")  # generate never writes a media marker
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], 1)
    assert torch.equal(gen, seq[:, ids.size(1):])


def test_generate_never_writes_a_media_marker_even_when_the_lm_prefers_it():
    m = make()
    marks = torch.tensor([TOK.image, TOK.video])
    m.decoder.out.register_forward_hook(lambda mod, inp, out: out.index_fill(-1, marks, 1e4))
    row = {"id": "0", "conversations": [{"from": "human", "value": "<image> what colour is the circle?"}],
           "media": [Mixture({"vqa": 1.0}, "train", 1)[0]["media"][0]]}
    col = Collator(TOK, m.media_tokens)
    ids, media = torch.tensor([col.encode(row)[0]]), col.pack_media([row])
    for temperature in (0, 1.0):
        out = m.generate(ids, media, max_new_tokens=4, temperature=temperature).tolist()[0]
        assert not {TOK.image, TOK.video} & set(out)


def test_gated_layers_sit_before_every_kth_block_and_phases_freeze_as_the_paper_says():
    m = make(n_layer=4, xattn_every=2)
    assert len(m.xattn) == 2 and set(m.diagnostics()) == {f"tanh_{g}_gate/{i}" for g in ("attn", "ffw") for i in (0, 2)}
    m.set_phase("mixture")
    trains = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert trains == {"resampler", "xattn", "media_emb"}
    cfg = train.build_config(FL, TOK, {"mix": "caption:1,interleaved:3"})
    assert FL.PHASES["mixture"]["tasks"] == "mix"  # the data follows Config.mix, and so a --mix flag
    assert train.recipe(FL, cfg)["mixture"]["tasks"] == {"caption": 1.0, "interleaved": 3.0}


def test_cell_pos_names_each_patch_cell_and_trains_only_in_vision():
    """cell_pos: the 'vision' objective also asks every patch which of the 9 cells it lies in (the
    2x2 patches of a cell in the 6x6 grid share one), with a head that only 'vision' trains."""
    assert FL.patch_cells(6).view(6, 6)[::2, ::2].flatten().tolist() == list(range(9))
    blocks = FL.patch_cells(6).view(3, 2, 3, 2)  # (cell row, row in cell, cell col, col in cell)
    assert torch.equal(blocks, blocks[:, :1, :, :1].expand(3, 2, 3, 2))  # a cell's 2x2 patches share it
    losses, auxes = {}, {}
    for on in (False, True):
        m = make("vision", cell_pos=on)
        b = batch("cells")
        _, losses[on], auxes[on] = m.cell_words(b["tokens"], b["targets"], b["media"])
        trains = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
        assert trains == {"encoder", "cell_head", "pos_head"}
    assert auxes[False] == {} and set(auxes[True]) == {"cell_pos"}  # the term is named, as the contract asks
    assert torch.allclose(losses[True], losses[False] + auxes[True]["cell_pos"])
    assert auxes[True]["cell_pos"] > 1.0  # about ln 9 from the untrained 9-way head
