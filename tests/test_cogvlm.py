"""nano_cogvlm: what makes it CogVLM. The frozen LM on text, the expert copied from the LM, the
routing by token type, one rotary position per image, the image mask, the LM untouched by training,
and the KV cache with expert keys. The contract (shapes, DDP rule, strict loading) is test_contract's."""
import pytest
import torch

import bench
import nano_cogvlm as M
import train
from data import Collator, Mixture, Tokenizer, get_sample

TOK = Tokenizer()
S = 11  # media_tokens["image"] at the tiny size: boi + 9 patches + eoi


def make(phase="vqa", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = train.build_config(M, TOK, {**bench.SIZES["tiny"]["cogvlm"]["config"], **kw})
    m = M.Model(cfg)
    m.set_phase(phase)
    return m.eval()


def scramble(module, seed=1, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def encode(m, texts, n_images):
    """Rows of equal length from texts with <image> markers (padded with words), and their images."""
    col = Collator(TOK, m.media_tokens)
    rows = [{"conversations": [{"from": "human", "value": t}],
             "media": [get_sample("vqa", "train", i)["media"][0] for i in range(k)]} for t, k in zip(texts, n_images)]
    longest = max(len(col.encode(r)[0]) for r in rows)
    for r in rows:
        r["conversations"][0]["value"] += " the" * (longest - len(col.encode(r)[0]))
    return torch.tensor([col.encode(r)[0] for r in rows]), col.pack_media(rows)


def logits(m, ids, media=None):
    with torch.no_grad():
        return m(ids, None, media)[0]


def test_text_only_input_is_exactly_the_frozen_lm_whatever_the_expert():
    m = make()
    b = Collator(TOK, m.media_tokens)([Mixture({"text": 1.0}, "train", 8)[i] for i in range(6)])
    before = logits(m, b["tokens"])
    scramble(m.expert)
    scramble(m.adapter, seed=2)
    assert torch.equal(before, logits(m, b["tokens"]))


def test_after_begin_phase_image_positions_use_exactly_the_lm_weights():
    """Routing with copied experts == sending every position through the LM's own weights."""
    m = make()
    scramble(m.decoder, scale=0.1)  # a LM whose weights differ from the experts' random init
    m.begin_phase("caption")
    ids, media = encode(m, ["<image> what colour is the circle?"], [1])
    x, image, pos, mask = m.embed(ids, media)
    assert image.any()
    block, expert = m.decoder.blocks[0], m.expert[0]
    cos, sin = m.decoder.cos[pos].unsqueeze(1), m.decoder.sin[pos].unsqueeze(1)
    with torch.no_grad():
        routed = block(x, expert, M.Route(image), cos, sin)
        lm_only = block(x, expert, M.Route(torch.zeros_like(image)), cos, sin)
        assert torch.allclose(routed, lm_only, atol=1e-6)  # one layer
        full = m.decoder(x, pos, m.expert, M.Route(image))
        assert torch.allclose(full, m.decoder(x, pos, m.expert, M.Route(torch.zeros_like(image))), atol=1e-5)
    scramble(m.expert)  # and the routing is real: other expert weights, other outputs
    with torch.no_grad():
        assert not torch.allclose(block(x, expert, M.Route(image), cos, sin), lm_only, atol=1e-3)


def test_word_scale_starts_image_tokens_at_the_lm_words_rms():
    """word_scale: begin_phase sets the adapter norm's gain to the RMS of the LM's word embeddings,
    so the adapter's output has exactly that RMS; without it the gain stays at 1."""
    for on in (True, False):
        m = make(word_scale=on)
        scramble(m.decoder.emb, scale=0.05)  # an embedding whose RMS is not the init's
        m.begin_phase("caption")
        words = m.decoder.emb.weight.pow(2).mean().sqrt()
        gain = m.adapter.norm.weight
        assert torch.allclose(gain, words.expand_as(gain) if on else torch.ones_like(gain))
        out = m.adapter.norm(torch.randn(5, gain.numel()))  # (5, C), any input
        assert torch.allclose(out.pow(2).mean(-1).sqrt(), (words if on else torch.ones(())).expand(5), rtol=1e-3)


def test_expert_changes_image_and_later_text_but_never_text_before_the_first_image():
    m = make(image_first=False)  # the decoder reads the prompt in its own order
    ids, media = encode(m, ["what colour is the circle? <image> what shape is it?"], [1])
    first = int((ids[0] == TOK.image).nonzero()[0])
    before = logits(m, ids, media)
    scramble(m.expert)
    after = logits(m, ids, media)
    assert torch.equal(before[:, :first], after[:, :first])
    span = slice(first, first + S - 1)  # boi and patches: the expert's positions
    assert not torch.allclose(before[:, span], after[:, span], atol=1e-4)
    assert not torch.allclose(before[:, first + S:], after[:, first + S:], atol=1e-4)


def test_image_first_reads_the_image_right_after_bos_wherever_the_prompt_names_it():
    """image_first (CogVLM's input layout): a question asked before its image is read as if the
    image came first, and the logits come back in the prompt's order, where the targets are."""
    m = make()
    scramble(m.expert)
    q_first, media = encode(m, ["what colour is the circle?<image>"], [1])
    i_first, _ = encode(m, ["<image> what colour is the circle?"], [1])
    order = m.front(q_first, media)
    assert torch.equal(q_first.gather(1, order), i_first)  # <bos>, the span, then the text in order
    a, b = logits(m, q_first, media), logits(m, i_first, media)
    assert torch.allclose(a.gather(1, order[..., None].expand_as(a)), b, atol=1e-5)
    # the question now reads the image, so the expert reaches it; in the prompt's order it cannot
    first = int((q_first[0] == TOK.image).nonzero()[0])
    m.cfg.image_first = False
    off = logits(m, q_first, media)
    scramble(m.expert, seed=3)
    assert torch.equal(off[:, :first], logits(m, q_first, media)[:, :first])
    m.cfg.image_first = True
    assert not torch.allclose(a[:, 1:first], logits(m, q_first, media)[:, 1:first], atol=1e-4)
    assert m.front(q_first[:, :first], None) is None  # text only: read as it is


def test_all_patches_of_an_image_share_one_rotary_position():
    m = make()
    ids, media = encode(m, ["a <image> b <image> what colour is the circle?"], [2])
    _, image, pos, _ = m.embed(ids, media)
    starts = [int(i) for i in (ids[0] == TOK.image).nonzero()[:, 0] if i == 0 or ids[0, i - 1] != TOK.image]
    assert len(starts) == 2
    for s in starts:
        p = int(pos[0, s])
        assert pos[0, s + 1:s + S - 1].tolist() == [p + 1] * (S - 2)  # every patch: p + 1
        assert int(pos[0, s + S - 1]) == p + 2 and int(pos[0, s + S]) == p + 3  # eoi, then text
        assert image[0, s:s + S - 1].all() and not image[0, s + S - 1]  # eoi through the LM's weights
    assert int(pos[0, -1]) == ids.size(1) - 1 - 2 * (S - 3)  # each image saves S - 3 positions
    # the rotary phase really is shared: q/k of every patch rotated by the same angles
    cos = m.decoder.cos[pos]
    assert torch.equal(cos[0, starts[0] + 1], cos[0, starts[0] + S - 2])


@pytest.mark.parametrize("image_mask", ["causal", "full"])
def test_image_mask(image_mask):
    """causal: a patch never sees later patches; full: it sees its whole image but no later token."""
    m = make(image_mask=image_mask, image_first=False)
    ids, media = encode(m, ["what colour is the circle? <image> what shape is it?"], [1])
    first = int((ids[0] == TOK.image).nonzero()[0])
    base = logits(m, ids, media)
    # change the last patch's token only (the ViT itself mixes all patches, so not the pixels)
    hook = m.adapter.glu.register_forward_hook(lambda mod, inp, out: out + torch.eye(S - 2)[-1][None, :, None])
    changed = logits(m, ids, media)
    hook.remove()
    early = slice(first, first + S - 2)  # boi and every patch but the last
    assert not torch.allclose(base[:, first + S - 2:], changed[:, first + S - 2:], atol=1e-4)
    assert torch.equal(base[:, :first], changed[:, :first])
    assert torch.allclose(base[:, early], changed[:, early], atol=1e-6) == (image_mask == "causal")
    # text after the image never leaks into the image, under either mask
    ids2 = ids.clone()
    ids2[0, first + S:] = TOK.stoi["red"]
    assert torch.allclose(base[:, :first + S], logits(m, ids2, media)[:, :first + S], atol=1e-6)


def test_training_the_expert_leaves_the_lm_and_the_vit_untouched():
    m = make("caption")
    m.train()
    frozen = {k: v.clone() for k, v in m.state_dict().items() if k.startswith(("decoder.", "encoder."))}
    expert = {k: v.clone() for k, v in m.expert.state_dict().items()}
    opt = train.make_optimizer(m, 3e-3, 0.1, 0.95, "cpu")
    b = Collator(TOK, m.media_tokens)([Mixture({"caption": 1.0, "text": 1.0}, "train", 8)[i] for i in range(8)])
    for _ in range(3):
        opt.zero_grad()
        m(b["tokens"], b["targets"], b["media"])[1].backward()
        opt.step()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in frozen.items())
    assert not all(torch.equal(v, m.expert.state_dict()[k]) for k, v in expert.items())


@pytest.mark.parametrize("image_mask", ["causal", "full"])
def test_kv_cache_holds_expert_keys_and_per_row_positions(image_mask):
    """Greedy generation with the cache == recomputation, rows with 0, 1 and 2 images in one batch;
    and the experts matter to the result (a test that could fail)."""
    m = make(image_mask=image_mask)
    scramble(m)
    ids, media = encode(m, ["what colour is the circle?", "what colour is the circle? <image>",
                            "<image> <image> what colour is the circle?"], [0, 1, 2])
    gen = m.generate(ids, media, max_new_tokens=8, temperature=0)
    seq = ids
    for _ in range(8):
        last = logits(m, seq, media)[:, -1]
        last[:, TOK.image] = -float("inf")  # generate never writes a placeholder, which needs an image
        seq = torch.cat([seq, last.argmax(-1, keepdim=True)], 1)
    assert torch.equal(gen, seq[:, ids.size(1):])
    assert len(set(gen[1:].flatten().tolist())) > 2
    m.begin_phase("caption")  # experts = LM: the image rows' greedy tokens change
    assert not torch.equal(gen[1:], m.generate(ids, media, max_new_tokens=8, temperature=0)[1:])


def test_generate_never_writes_a_placeholder_even_when_the_lm_prefers_it():
    """An <image> placeholder needs an image to fill it, so generate masks it out."""
    m = make()
    m.decoder.head.register_forward_hook(lambda mod, inp, out: out.index_fill(-1, torch.tensor([TOK.image]), 1e4))
    ids, media = encode(m, ["<image> what colour is the circle?"], [1])
    for temperature in (0, 1.0):
        assert TOK.image not in m.generate(ids, media, max_new_tokens=4, temperature=temperature).tolist()[0]


def test_the_removed_vit_layer_feeds_nothing_but_its_own_vision_objective():
    m = make()
    ids, media = encode(m, ["<image> what colour is the circle?"], [1])
    before = logits(m, ids, media)
    scramble(m.encoder.blocks[-1])
    assert torch.equal(before, logits(m, ids, media))
    m = make("vision")
    b = Collator(TOK, m.media_tokens)([Mixture({"cells": 1.0}, "train", 4)[i] for i in range(4)])
    out, loss, aux = m.cell_words(b["tokens"], b["targets"], b["media"])
    assert out.shape == (4, 27, len(TOK)) and set(aux) == {"bag", "cell_pos"}
    loss.backward()
    assert m.encoder.blocks[-1].qkv.weight.grad.abs().sum() > 0
    assert m.pos_head.weight.grad.abs().sum() > 0  # cell_pos: the head that names each token's cell
    # the removed layer's objective stops at it: its gradient never bends the layers the LM reads
    m.zero_grad()
    m.cell_words(b["tokens"], b["targets"], b["media"])[2]["bag"].backward()
    assert m.encoder.blocks[-1].qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in m.encoder.blocks[:-1].parameters())


def test_placeholders_must_form_whole_spans():
    m = make()
    ids, media = encode(m, ["<image> a <image> what colour is the circle?"], [2])
    first = int((ids[0] == TOK.image).nonzero()[0])
    bad = ids.clone()
    bad[0, first + 5] = TOK.stoi["red"]  # a span broken in two, the same number of placeholders elsewhere
    bad[0, -1] = TOK.image
    with pytest.raises(ValueError):
        m(bad, None, media)
