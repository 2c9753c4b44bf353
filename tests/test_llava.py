"""nano_llava: shapes, causality, KV cache, the freezing schedule, splicing, penultimate features."""
import pytest
import torch

import nano_llava as L
from data import Collator, Mixture, Tokenizer

TOK = Tokenizer()
TINY = dict(vocab_size=len(TOK), image_id=TOK.image, eos_id=TOK.eos, n_layer=2, n_head=2, n_embd=32,
            mlp_hidden=64, vit_layers=3, vit_embd=32, vit_heads=2, vit_mlp=64)


def make(phase="instruct", **kw):
    torch.manual_seed(0)
    m = L.Model(L.Config(**{**TINY, **kw}))
    m.set_phase(phase)
    return m


def batch(m, task="vqa", n=6):
    ds = Mixture({task: 1.0}, "train", 100)
    return Collator(TOK, m.media_tokens)([ds[i] for i in range(n)])


def test_forward_shapes_and_contract():
    """forward returns (logits (B, T, V), scalar loss, aux dict); no targets -> loss None."""
    m = make()
    b = batch(m)
    logits, loss, aux = m(b["tokens"], b["targets"], b["media"])
    assert logits.shape == (*b["tokens"].shape, len(TOK))
    assert loss.ndim == 0 and torch.isfinite(loss) and aux == {}
    assert m(b["tokens"], None, b["media"])[1] is None
    assert m.media_tokens == {"image": 9}


def test_causality():
    """Changing a later token never changes the logits of earlier positions."""
    m = make()
    b = batch(m, n=2)
    t = b["tokens"].clone()
    logits, _, _ = m(t, None, b["media"])
    t2 = t.clone()
    tail = t2[:, -3:]
    t2[:, -3:] = torch.where(tail == TOK.image, tail, TOK.stoi["red"])  # placeholders stay: media must fit
    logits2, _, _ = m(t2, None, b["media"])
    assert torch.allclose(logits[:, :-3], logits2[:, :-3], atol=1e-6)
    assert not torch.allclose(logits[:, -2:], logits2[:, -2:])


@pytest.mark.parametrize("phase", ["instruct", "text"])
def test_kv_cache_generation_equals_full_recompute(phase):
    """Greedy generation with the KV cache equals re-running the whole sequence each step."""
    m = make(phase).eval()
    sample, _ = Collator.prompt(Mixture({"vqa": 1.0}, "val", 10)[3])
    col = Collator(TOK, m.media_tokens)
    x = torch.tensor([col.encode(sample)[0]] * 2)
    media = col.pack_media([sample, sample])
    gen = m.generate(x, media, max_new_tokens=7, temperature=0)
    seq = x
    for _ in range(7):
        logits, _, _ = m(seq, None, media)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(gen, seq[:, x.size(1):])


def test_sampling_respects_top_k():
    """With top_k=1 sampling at any temperature is greedy."""
    m = make().eval()
    col = Collator(TOK, m.media_tokens)
    sample, _ = Collator.prompt(Mixture({"vqa": 1.0}, "val", 10)[0])
    prompt, media = torch.tensor([col.encode(sample)[0]]), col.pack_media([sample])
    torch.manual_seed(1)
    assert torch.equal(m.generate(prompt, media, 5, temperature=2.0, top_k=1),
                       m.generate(prompt, media, 5, temperature=0))


def test_align_trains_only_the_projector():
    """In 'align' only the projector has requires_grad, and one AdamW step leaves all else equal."""
    m = make("align")
    assert {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad} == {"projector"}
    before = {n: p.clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    b = batch(m, "caption")
    m(b["tokens"], b["targets"], b["media"])[1].backward()
    opt.step()
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith("projector"), n


def test_phases_freeze_as_the_papers_say():
    """instruct trains projector + LLM with the ViT frozen; text trains only the LLM."""
    groups = lambda m: {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert groups(make("instruct")) == {"projector", "decoder"}
    assert groups(make("text")) == {"decoder"}
    assert groups(make("vision")) == {"encoder", "cell_head", "pos_head"}
    assert list(L.PHASES) == ["text", "vision", "align", "instruct"]
    with pytest.raises(ValueError, match="unknown phase"):
        make("pretrain")


@pytest.mark.parametrize("select", [-1, -2])
def test_llm_reads_the_selected_vit_layer(select):
    """The LLM reads the ViT's select_layer (default the last; -2 is LLaVA's penultimate): blocks
    after it cannot change the LLM's output, the selected one does."""
    m = make("instruct", select_layer=select)
    b = batch(m, n=2)
    logits, _, _ = m(b["tokens"], None, b["media"])
    with torch.no_grad():
        for block in list(m.encoder.blocks)[len(m.encoder.blocks) + select + 1:]:
            for p in block.parameters():
                p.add_(torch.randn_like(p))
    assert torch.equal(logits, m(b["tokens"], None, b["media"])[0])
    with torch.no_grad():
        for p in m.encoder.blocks[select].parameters():
            p.add_(torch.randn_like(p))
    assert not torch.allclose(logits, m(b["tokens"], None, b["media"])[0])


def test_vision_head_names_each_cell_from_its_own_token(monkeypatch):
    """'vision' objective: 27 word logits, 3 per cell, each triple read from that cell's token only;
    the loss is their cross-entropy against the `cells` text, plus the aux term `cell_pos`, the
    head's cross-entropy for which of the 9 cells each token is (cell_pos=False: the words alone);
    a batch of another task is a clear error; forward stays the language model's path in every phase."""
    m = make("vision")
    assert L.PHASES["vision"]["objective"] == "cell_words"
    b = batch(m, "cells", n=3)
    logits, loss, aux = m.cell_words(b["tokens"], b["targets"], b["media"])
    words = b["targets"][b["targets"] != -100].view(3, 28)[:, :27]
    assert logits.shape == (3, 27, len(TOK))
    word_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), words.flatten())
    z = m.pos_head(m.image_tokens(b["media"]["image"]))  # (3, 9 tokens, 9 cells)
    cell_loss = torch.nn.functional.cross_entropy(z.flatten(0, 1), torch.arange(9).repeat(3))
    assert set(aux) == {"cell_pos"} and torch.allclose(aux["cell_pos"], cell_loss)
    assert torch.allclose(loss, word_loss + cell_loss)
    m.cfg.cell_pos = False
    logits_off, loss_off, aux_off = m.cell_words(b["tokens"], b["targets"], b["media"])
    assert aux_off == {} and torch.equal(logits_off, logits) and torch.allclose(loss_off, word_loss)
    m.cfg.cell_pos = True
    assert m(b["tokens"], None, b["media"])[0].shape == (*b["tokens"].shape, len(TOK))
    feats = m.image_tokens(b["media"]["image"])
    feats2 = feats.clone()
    feats2[:, 4] += 1.0  # the centre cell's token
    monkeypatch.setattr(m, "image_tokens", lambda images: feats2)
    changed = (m.cell_words(b["tokens"], None, b["media"])[0] != logits).any(-1).any(0)  # (27,)
    assert changed.nonzero().flatten().tolist() == [12, 13, 14]
    monkeypatch.undo()
    vqa = batch(m, "vqa", n=2)
    with pytest.raises(ValueError, match="27 words and <eos> per row"):
        m.cell_words(vqa["tokens"], vqa["targets"], vqa["media"])
    unshuffled = make("vision", pixel_shuffle=1)  # 36 patch tokens: no token per cell to name
    with pytest.raises(ValueError, match="one image token per cell"):
        unshuffled.cell_words(b["tokens"], b["targets"], b["media"])


def test_image_features_land_on_the_placeholders():
    """The k-th image's features fill the k-th run of placeholders; text embeddings are untouched."""
    m = make()
    b = batch(m, n=3)
    x = m.embed(b["tokens"], b["media"])
    feats = m.projector(m.merge_patches(m.encoder(b["media"]["image"], -1)))  # (N, 9, C): the last layer
    slots = b["tokens"] == TOK.image
    assert torch.allclose(x[slots].view(3, 9, -1), feats)
    assert torch.equal(x[~slots], m.decoder.emb(b["tokens"])[~slots])


def test_pixel_shuffle_groups_neighbouring_patches():
    """Token k of the 3x3 output concatenates the 2x2 block of patches under cell k, in order."""
    m = make()
    x = torch.arange(36.0).view(1, 36, 1)  # patch index as its only feature
    out = m.merge_patches(x)[0]  # (9, 4)
    assert out[0].tolist() == [0, 1, 6, 7] and out[4].tolist() == [14, 15, 20, 21]
    assert out[8].tolist() == [28, 29, 34, 35]
    assert make(pixel_shuffle=1, image_size=36).media_tokens == {"image": 9}


def test_projector_switches():
    """projector='linear' is LLaVA v1's single matrix; the default is LLaVA-1.5's Linear-GELU-Linear;
    both end in an RMSNorm unless proj_norm=False."""
    nn = torch.nn
    types = lambda m: [type(layer) for layer in m.projector]
    assert types(make(projector="linear")) == [nn.Linear, L.RMSNorm]
    assert types(make()) == [nn.Linear, nn.GELU, nn.Linear, L.RMSNorm]
    assert types(make(proj_norm=False)) == [nn.Linear, nn.GELU, nn.Linear]
    with pytest.raises(ValueError, match="projector"):
        L.Config(projector="mlp3x")


def test_projector_norm_fixes_the_image_tokens_scale():
    """The projector's RMSNorm (weight 1 at init) rescales each image token to unit RMS, so its
    scale no longer follows the ViT features': 1000x larger features give tokens of RMS 1 where
    the same projector without the norm gives tokens ~1000x larger."""
    torch.manual_seed(0)
    x = torch.randn(2, 9, 4 * 32)  # pixel-shuffled features of the tiny test ViT (vit_embd 32)
    m, raw = make(), make(proj_norm=False)  # same seed: the same Linear weights
    rms = lambda t: t.pow(2).mean(-1).sqrt()
    with torch.no_grad():
        y = raw.projector(x)
        assert torch.allclose(m.projector(x), torch.nn.functional.rms_norm(y, (y.size(-1),), eps=1e-5), atol=1e-5)
        assert torch.allclose(rms(m.projector(1000 * x)), torch.ones(2, 9), atol=1e-4)
        assert rms(raw.projector(1000 * x)).min() > 100 * rms(raw.projector(x)).max()


def test_placeholder_media_mismatch_raises():
    """Too few placeholders for the images, or a modality LLaVA does not take: clear ValueError."""
    m = make()
    b = batch(m, n=2)
    with pytest.raises(ValueError, match="placeholder positions but 2 images"):
        m(b["tokens"][:, 3:], None, b["media"])
    with pytest.raises(ValueError, match="takes only images"):
        m(b["tokens"], None, {**b["media"], "audio": torch.zeros(2, 16000)})


def test_overfit_one_batch():
    """A hundred steps on one fixed batch drive the answer loss below a tenth of its start."""
    m = make("instruct")
    for p in m.parameters():
        p.requires_grad = True
    b = batch(m, n=8)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(120):
        loss = m(b["tokens"], b["targets"], b["media"])[1]
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())
