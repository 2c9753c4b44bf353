"""The model contract (docs/DESIGN.md section 1), checked on every nano_*.py that exists and on the
stand-in model (tests/standin.py). A new model file is covered the moment it is listed in
train.MODELS; its own test file then holds only what is particular to its mechanisms.

Each model is built at its `tiny` size from bench.SIZES, with the tokenizer filling its Config as
train.py does.
"""
import os

import pytest
import torch

import bench
import train
from data import Mixture, Tokenizer, get_sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = Tokenizer()
NAMES = [n for n, m in train.MODELS.items() if os.path.exists(os.path.join(ROOT, f"{m}.py"))] + ["standin"]
SOURCE = {"image": "vqa", "audio": "audio_qa", "speech": "speech", "video": "video_qa"}  # a task per modality


@pytest.fixture(autouse=True)
def standin_is_a_model(monkeypatch):
    monkeypatch.setitem(train.MODELS, "standin", "standin")


def tiny(name):
    return bench.SIZES["tiny"].get(name, {}).get("config", {})


def build(name, phase=None, seed=0):
    mod = train.model_module(name)
    torch.manual_seed(seed)
    model = mod.Model(train.build_config(mod, TOK, tiny(name)))
    model.set_phase(phase or list(mod.PHASES)[-1])
    return mod, model


def media_of(task):
    return {m["type"] for m in get_sample(task, "train", 0)["media"]}


def batch(model, spec, tasks=None, n=4, seed=1):
    ds = Mixture(tasks or spec["tasks"], "train", n, seed)
    return train.phase_collator(model, TOK, spec)([ds[i] for i in range(n)])


def run(net, b, targets=True):
    return net(b["tokens"], b["targets"] if targets else None, b["media"])


def phases(name, generating=False):
    """(phase, spec) of a model's recipe; with generating=True only those trained through forward."""
    mod = train.model_module(name)
    specs = train.recipe(mod, train.build_config(mod, TOK, tiny(name)))
    return [(p, s) for p, s in specs.items() if not (generating and s.get("objective"))]


@pytest.mark.parametrize("name", NAMES)
def test_forward_returns_logits_loss_and_named_aux_terms(name):
    """In every phase: (logits, scalar loss, {name: scalar}); no targets, no loss."""
    for phase, spec in phases(name):
        _, model = build(name, phase)
        net, b = train.phase_net(model, spec), batch(model, spec)
        logits, loss, aux = run(net, b)
        assert logits.size(0) == b["tokens"].size(0) and loss.ndim == 0 and torch.isfinite(loss), phase
        assert isinstance(aux, dict) and all(torch.as_tensor(v).ndim == 0 for v in aux.values()), phase
        assert run(net, b, targets=False)[1] is None, phase


@pytest.mark.parametrize("name", NAMES)
def test_causality(name):
    """Changing later text tokens never changes the logits of earlier positions."""
    phase, spec = phases(name, generating=True)[-1]
    _, model = build(name, phase)
    b = batch(model, spec)
    logits = run(model, b, targets=False)[0]
    cut, tokens = b["tokens"].size(1) - 3, b["tokens"].clone()
    markers = torch.tensor([TOK.stoi[f"<{m}>"] for m in model.media_tokens])
    tail = tokens[:, cut:]
    tokens[:, cut:] = torch.where(torch.isin(tail, markers), tail, TOK.stoi["red"])  # placeholders must stay
    logits2 = model(tokens, None, b["media"])[0]
    assert torch.allclose(logits[:, :cut], logits2[:, :cut], atol=1e-5)
    assert not torch.allclose(logits[:, cut:], logits2[:, cut:])


def prompts(model, modality, counts=(1, 2)):
    """Prompt ids of equal length whose rows hold `counts` items of one modality, and their media."""
    collator = train.phase_collator(model, TOK, {})
    rows, media = [], []
    for k in counts:
        items = [get_sample(SOURCE[modality], "train", i)["media"][0] for i in range(k)]
        text = " ".join([f"<{modality}>"] * k) + " what colour is the circle?"
        rows.append({"id": f"{k} items", "conversations": [{"from": "human", "value": text}], "media": items})
    longest = max(len(collator.encode(r)[0]) for r in rows)
    for r in rows:  # pad the shorter prompts with words: rows run in lockstep
        pad = longest - len(collator.encode(r)[0])
        r["conversations"][0]["value"] += " the" * pad
    ids = torch.tensor([collator.encode(r)[0] for r in rows])
    return ids, collator.pack_media(rows)


@pytest.mark.parametrize("name", NAMES)
def test_kv_cache_generation_equals_recomputation(name):
    """Greedy generate (with its cache) equals re-running forward on the growing sequence, with rows
    that hold different numbers of media items, for every modality the model takes."""
    for phase, _ in phases(name, generating=True):
        _, model = build(name, phase)
        model.eval()
        with torch.no_grad():  # an untrained model repeats one token whatever the context: make it care
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        for modality in model.media_tokens:
            ids, media = prompts(model, modality)
            gen = model.generate(ids, media, max_new_tokens=8, temperature=0)
            assert len(set(gen.flatten().tolist())) > 2, "a test that cannot fail: the greedy tokens do not vary"
            seq = ids
            with torch.no_grad():
                for _ in range(8):
                    seq = torch.cat([seq, model(seq, None, media)[0][:, -1].argmax(-1, keepdim=True)], 1)
            assert torch.equal(gen, seq[:, ids.size(1):]), (phase, modality)


@pytest.mark.parametrize("name", NAMES)
def test_placeholders_that_do_not_fit_the_media_raise(name):
    """One placeholder too few, or one media item too few: a ValueError, not a silent misfit."""
    phase, spec = phases(name, generating=True)[-1]
    _, model = build(name, phase)
    for modality in model.media_tokens:
        ids, media = prompts(model, modality)
        marker = TOK.stoi[f"<{modality}>"]
        fewer = ids.clone()
        fewer[0, (fewer[0] == marker).nonzero()[0]] = TOK.stoi["red"]
        with pytest.raises(ValueError):
            model(fewer, None, media)
        with pytest.raises(ValueError):
            model(ids, None, {modality: media[modality][:-1]})


@pytest.mark.parametrize("name", NAMES)
def test_set_phase_is_idempotent_and_freezes_exactly_the_named_groups(name):
    mod, model = build(name)
    for phase, spec in mod.PHASES.items():
        model.set_phase(phase)
        trains = {n for n, p in model.named_parameters() if p.requires_grad}
        model.set_phase(phase)
        assert trains == {n for n, p in model.named_parameters() if p.requires_grad}, phase
        for group in spec["train"]:
            assert any(n == group or n.startswith(group + ".") for n in trains), (phase, group)
        assert all(any(n == g or n.startswith(g + ".") for g in spec["train"]) for n in trains), phase
    with pytest.raises(ValueError):
        model.set_phase("no such phase")


@pytest.mark.parametrize("name", NAMES)
def test_every_trainable_parameter_gets_a_gradient_in_every_batch(name):
    """The DDP rule: in every phase every trainable parameter takes part in every step, on a batch of
    the phase's tasks and on one that lacks a modality the model takes (an expert or connector
    with nothing to do still joins in), so DDP needs no find_unused_parameters."""
    for phase, spec in phases(name):
        _, model = build(name, phase)
        net = train.phase_net(model, spec)
        batches = [batch(model, spec)]
        if not spec.get("objective"):
            for m in model.media_tokens:
                lacking = [t for t in spec["tasks"] if m not in media_of(t)] or ["text"]
                batches.append(batch(model, spec, lacking))
        for b in batches:
            model.zero_grad(set_to_none=True)
            run(net, b)[1].backward()
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, (phase, sorted(b["media"]), missing[:5])


@pytest.mark.parametrize("name", NAMES)
def test_strict_state_dict_round_trip(name):
    """Another seed's model loaded strictly from a state dict computes the same logits."""
    phase, spec = phases(name, generating=True)[-1]
    _, a = build(name, phase)
    _, b = build(name, phase, seed=1)
    train.load_weights(b, a.state_dict(), "round trip")
    x = batch(a, spec)
    a.eval(), b.eval()
    assert torch.equal(run(a, x, targets=False)[0], run(b, x, targets=False)[0])


@pytest.mark.parametrize("name", NAMES)
def test_train_runs_every_phase_of_the_recipe(name, tmp_path):
    """train.py runs the whole recipe for two steps a phase: a checkpoint per phase, a final report
    judged on the last phase's tasks, and a checkpoint load_model rebuilds."""
    flags = [f"--{k}={v}" for k, v in tiny(name).items()]
    res = train.main(["--model", name, "--out_dir", str(tmp_path), "--steps", "2", "--batch_size", "4",
                      "--eval_samples", "4", "--final_samples", "4", "--threads", "1", *flags])
    mod = train.model_module(name)
    assert all((tmp_path / f"{p}.pt").exists() for p in mod.PHASES)
    spec = phases(name)[-1][1]
    assert set(res["test"]) == {t for t in train.eval_tasks(spec) if train.prompted(t, "test", 4)}
    assert "text" in res["test_loss"] and list(res["text_loss_after"]) == list(mod.PHASES)
    _, _, ck = train.load_model(str(tmp_path / f"{list(mod.PHASES)[-1]}.pt"))
    assert ck["done"] and ck["begun"] == list(mod.PHASES)
