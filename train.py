"""Train any nano model on the toy world or on your own data: every phase of its recipe, on one
device or many.

    python train.py --model llava                        # the whole default recipe, all phases in order
    python train.py --model llava --phase instruct --init_from out/llava/align.pt --out_dir out/llava_instruct
    python train.py --model llava --resume               # continue the run in out/llava where it stopped
    torchrun --nproc_per_node 2 train.py --model llava   # DDP (nccl on GPU, gloo on CPU)
    python train.py --model llava --n_layer 6 --lr 5e-4  # any Config field or knob is a flag
    python train.py --model llava --phase instruct --init_from out/llava/align.pt --data mydata/llava.json \
        --out_dir out/mydata                             # your own records (data/folder.py)

The trainer knows only the model contract (docs/DESIGN.md): Config, Model(cfg).media_tokens,
forward(tokens, targets, media) -> (logits, loss, aux), generate, PHASES, set_phase, and the
optional media_targets, decode_media, diagnostics and begin_phase. A run lives in its out_dir:
run.json (what was asked), <phase>.pt per phase (written atomically), log.jsonl, plots.png and
results.json. A fresh run never touches another run's out_dir unless told to (--overwrite), and
--resume continues only the run that out_dir holds, refusing changed flags.
"""
import argparse
import dataclasses
import functools
import hashlib
import importlib
import json
import math
import os
import random
import re
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import Subset
from tqdm import tqdm

from data import COMPOSE, IGNORE, TASKS, Collator, Folder, Mixture, Tokenizer, get_sample, judge, make_loader
from data.collate import Epochs
from data.errors import UserError
from data.judges import judge_name

MODELS = {"llava": "nano_llava", "flamingo": "nano_flamingo", "cogvlm": "nano_cogvlm",
          "chameleon": "nano_chameleon", "unimoe": "nano_unimoe"}


# ----------------------------------------------------------------------------- arguments

def model_module(name):
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    try:
        return importlib.import_module(MODELS[name])
    except ModuleNotFoundError as e:
        if e.name != MODELS[name]:
            raise
        raise UserError(f"model {name!r} is not implemented yet ({MODELS[name]}.py is missing)")


def checked(kind, ok, what):
    """An argparse type: `kind`, and `ok(value)` must hold, else the flag's error says `what`."""
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {what}, got {text!r}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expects {what}, got {text!r}")
        return value
    return convert


POSITIVE = checked(int, lambda v: v > 0, "a whole number above 0")
COUNT = checked(int, lambda v: v >= 0, "a whole number, 0 or more")
RATE = checked(float, lambda v: v > 0 and math.isfinite(v), "a number above 0")
AMOUNT = checked(float, lambda v: v >= 0 and math.isfinite(v), "a number, 0 or more")
FRACTION = checked(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
DEVICE = checked(str, lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v), "auto, cpu, cuda, cuda:N or mps")
BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not a usage dump; main() turns it into exit code 2
        raise UserError(f"{message} (python train.py --help lists the flags)")


def build_parser():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag = p.add_argument
    flag("--model", required=True, help=f"one of {', '.join(MODELS)}")
    flag("--phase", default=None, help="run only this phase (default: every phase of the recipe in order)")
    flag("--out_dir", default=None, help="the run's folder: checkpoints, log, plots (default out/<model>)")
    flag("--overwrite", action="store_true", help="replace the run out_dir holds (its checkpoints, log, results)")
    flag("--init_from", default=None, help="start from this checkpoint's weights (e.g. the previous phase)")
    flag("--resume", action="store_true", help="continue the run in out_dir exactly where it stopped")
    flag("--steps", type=POSITIVE, default=None, help="optimizer steps per phase (default: the phase's own)")
    flag("--batch_size", type=POSITIVE, default=None, help="samples per micro-batch per process")
    flag("--grad_accum", type=POSITIVE, default=1, help="micro-batches per optimizer step")
    flag("--length_groups", type=POSITIVE, default=None, help="sort each micro-batch's rows by length and pad them "
         "in this many groups: less padding, the same gradient (default: the phase's own, else 1)")
    flag("--lr", type=RATE, default=None, help="peak learning rate (default: the phase's own)")
    flag("--min_lr_frac", type=checked(float, lambda v: 0 <= v <= 1, "a fraction in [0, 1]"), default=0.1,
         help="cosine decays to this fraction of the peak")
    flag("--warmup", type=FRACTION, default=0.05, help="warm-up, as a fraction of the phase's steps")
    flag("--weight_decay", type=AMOUNT, default=0.1, help="AdamW decay, on matrices only (a phase may set its own "
         "for some parameters: PHASES weight_decay)")
    flag("--beta2", type=checked(float, lambda v: 0 < v < 1, "a number in (0, 1)"), default=0.95)
    flag("--grad_clip", type=AMOUNT, default=1.0, help="clip the global gradient norm (0: off)")
    flag("--eval_every", type=COUNT, default=0, help="evaluate every N steps (default: ceil(steps/4), and at the end)")
    flag("--eval_samples", type=POSITIVE, default=100, help="held-out samples per task for scores, and for val loss")
    flag("--final_samples", type=POSITIVE, default=500, help="samples per task for the final test/compose report")
    flag("--tasks", default=None, help="with --phase: train on this task mixture instead of the phase's own, "
         "e.g. text:1,read:1")
    flag("--eval", default=None, help="with --phase: judge these tasks instead of the phase's own, e.g. vqa,read")
    flag("--data", default=None, help="train on these records (a folder with data.jsonl, or a .jsonl or LLaVA "
         ".json file) instead of the toy world")
    flag("--image_folder", default=None, help="--data's media paths are relative to this (default: its folder)")
    flag("--val_data", default=None, help="held-out records to judge a --data run on (default: a --val_share of --data)")
    flag("--val_share", type=checked(float, lambda v: 0 < v < 1, "a fraction in (0, 1)"), default=0.1,
         help="the share of --data's records held out for evaluation, chosen by a hash of each record's id")
    flag("--tokenizer", default=None, help="a tokenizer JSON (Tokenizer.save) to use instead of fitting one")
    flag("--min_word_count", type=POSITIVE, default=2, help="--data runs fit the tokenizer: the toy words plus "
         "every word of your records seen this many times")
    flag("--seed", type=int, default=0)
    flag("--device", type=DEVICE, default="auto", help="auto, cpu, cuda, cuda:1, mps")
    flag("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
         help="auto (bf16 autocast on CUDA, fp32 elsewhere), bf16 or fp32")
    flag("--compile", action="store_true", help="torch.compile the model (worth it on GPU)")
    flag("--threads", type=COUNT, default=0, help="CPU threads per process (default: torch's)")
    flag("--workers", type=COUNT, default=0, help="DataLoader worker processes")
    flag("--max_minutes", type=AMOUNT, default=0, help="time budget for the whole run, shared by phase length")
    flag("--no_final_eval", action="store_true", help="skip the final test/compose report")
    return p


def config_value(field, text):
    """A Config field's value from its flag: the type of its default; a bool must say so plainly."""
    kind = type(field.default)
    if kind is bool:
        if text.lower() not in BOOLS:
            raise UserError(f"--{field.name} expects true/false (or 1/0, yes/no), got {text!r}")
        return BOOLS[text.lower()]
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"--{field.name} expects a {kind.__name__}, got {text!r}")


def task_weights(text):
    """'text:1,read:2' -> {'text': 1.0, 'read': 2.0} (a bare name weighs 1), every name a toy task."""
    out = {}
    for part in text.split(","):
        name, _, w = part.strip().partition(":")
        if name not in TASKS:
            raise UserError(f"unknown task {name!r} in {text!r}; available: {', '.join(TASKS)}")
        try:
            out[name] = float(w or 1)
        except ValueError:
            raise UserError(f"task weight {w!r} of {name!r} is not a number")
        if not (out[name] >= 0 and math.isfinite(out[name])):
            raise UserError(f"task weight of {name!r} must be a number, 0 or more: {w!r}")
    if not sum(out.values()) > 0:
        raise UserError(f"the task weights {text!r} sum to 0")
    return out


def recipe(mod, cfg):
    """A model's PHASES with each phase's task weights resolved: a phase's `tasks` is a dict, or the
    name of a Config field that holds them as "task:weight,..." (Flamingo's `mix`), so that a flag
    for that field changes the data too."""
    out = {}
    for phase, spec in mod.PHASES.items():
        tasks = spec["tasks"]
        out[phase] = {**spec, "tasks": task_weights(getattr(cfg, tasks)) if isinstance(tasks, str) else dict(tasks)}
    return out


def parse_args(argv=None):
    """The trainer's flags, then the model's Config fields as --field value."""
    args, rest = build_parser().parse_known_args(argv)
    mod = model_module(args.model)
    fields = {f.name: f for f in dataclasses.fields(mod.Config)}
    overrides, i = {}, 0
    while i < len(rest):
        key, eq, val = rest[i].removeprefix("--").partition("=")
        if not rest[i].startswith("--") or key not in fields:
            raise UserError(f"unknown flag {rest[i]!r}: not a train.py flag nor a {args.model} Config field "
                            f"({', '.join(fields)})")
        if not eq:
            if i + 1 >= len(rest):
                raise UserError(f"flag --{key} needs a value")
            val, i = rest[i + 1], i + 1
        overrides[key] = config_value(fields[key], val)
        i += 1
    if args.phase is not None and args.phase not in mod.PHASES:
        raise UserError(f"unknown phase {args.phase!r} for {args.model}; phases: {', '.join(mod.PHASES)}")
    if (args.tasks or args.eval) and args.phase is None:
        raise UserError("--tasks and --eval change one phase: name it with --phase")
    if args.tasks:
        args.tasks = task_weights(args.tasks)
    if args.eval:
        args.eval = list(task_weights(args.eval))
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in out_dir and --overwrite replaces it: pass one")
    args.out_dir = args.out_dir or os.path.join("out", args.model)
    return args, mod, overrides


# ----------------------------------------------------------------------------- checkpoints

def clean_state_dict(sd):
    """Strip the wrappers' prefixes: DDP's 'module.' and torch.compile's '_orig_mod.'."""
    out = {}
    for k, v in sd.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.removeprefix("module.").removeprefix("_orig_mod.")
        out[k] = v
    return out


def grow_vocabulary(sd, own, old, new):
    """A checkpoint trained with a smaller vocabulary (`old` entries) for a model with a grown one
    (Tokenizer.fit keeps the old ids first): a dimension of k * old becomes k * new, the old rows
    keep their trained values and the new rows keep the model's fresh initialisation."""
    out = dict(sd)
    for k, v in sd.items():
        if k in own and v.shape != own[k].shape and v.dim() and v.size(0) % old == 0 \
                and own[k].size(0) == v.size(0) // old * new and v.shape[1:] == own[k].shape[1:]:
            grown = own[k].clone().unflatten(0, (-1, new))
            grown[:, :old] = v.unflatten(0, (-1, old))
            out[k] = grown.flatten(0, 1)
    return out


def load_weights(model, sd, source):
    """Strict load that says which keys are missing or unexpected, and which shapes differ."""
    sd, own = clean_state_dict(sd), model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise UserError(f"{source} does not fit this model (was it trained with another model or Config?)\n"
                        f"  missing keys: {missing[:8]}{' ...' if len(missing) > 8 else ''}\n"
                        f"  unexpected keys: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}\n"
                        f"  shape mismatches: {wrong[:8]}")
    model.load_state_dict(sd, strict=True)


def read_checkpoint(path):
    """A checkpoint is data, never code: weights_only=True refuses pickled objects."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"checkpoint {path!r} is unreadable or corrupt, or holds more than tensors and "
                        f"plain data ({type(e).__name__}: {first})")


def save_atomic(obj, path):
    """Write to a temp file, then rename: a crash mid-write never leaves a broken file."""
    tmp = path + ".tmp"
    if path.endswith(".json"):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def build_config(mod, tok, overrides=None):
    """A model's Config: the tokenizer fills the vocabulary size and every special-token id field
    (image_id <- <image>, eos_id <- <eos>, ...), then the overrides."""
    fill = {"vocab_size": len(tok)}
    fill.update({f.name: tok.stoi[f"<{f.name[:-3]}>"] for f in dataclasses.fields(mod.Config)
                 if f.name.endswith("_id") and f"<{f.name[:-3]}>" in tok.stoi})
    try:
        return mod.Config(**{**fill, **(overrides or {})})
    except ValueError as e:  # the Config's own checks, e.g. n_embd must divide by n_head
        raise UserError(f"bad {mod.__name__} Config: {e}")


def load_model(path, device="cpu"):
    """Rebuild (model, tokenizer, checkpoint) from a checkpoint alone. Used by sample.py, bench.py."""
    ck = read_checkpoint(path)
    if not isinstance(ck, dict) or not {"model_name", "config", "model", "phase", "tokenizer"} <= set(ck):
        raise UserError(f"{path!r} is not a checkpoint written by train.py")
    mod = model_module(ck["model_name"])
    unknown = set(ck["config"]) - {f.name for f in dataclasses.fields(mod.Config)}
    if unknown:
        raise UserError(f"{path!r} was written by another version of {ck['model_name']}: its config has "
                        f"{sorted(unknown)}, which this one does not know; load it with the code that wrote it")
    model = mod.Model(mod.Config(**ck["config"]))
    load_weights(model, ck["model"], path)
    model.set_phase(ck["phase"])
    return model.to(device).eval(), Tokenizer(**ck["tokenizer"]), ck


# ----------------------------------------------------------------------------- evaluation

class Objective(nn.Module):
    """A phase's own objective (PHASES "objective": a Model method with forward's signature and
    return) as the module's forward, so that DDP and torch.compile wrap it as they wrap forward."""

    def __init__(self, model, name):
        super().__init__()
        self.model, self.name = model, name

    def forward(self, tokens, targets=None, media=None):
        return getattr(self.model, self.name)(tokens, targets, media)


def phase_collator(model, tok, spec):
    """A phase's collator: which targets carry loss is the phase's `loss` and the model's media_targets."""
    return Collator(tok, model.media_tokens, getattr(model.cfg, "max_seq", None), getattr(model, "media_targets", ()),
                    spec.get("loss", "answers"))


def phase_net(model, spec):
    """What a phase optimises and evaluates: the model's forward, or the phase's own objective."""
    return Objective(model, spec["objective"]) if spec.get("objective") else model


def eval_tasks(spec):
    """The tasks a phase is judged on: its "eval" list if it has one, else the tasks it trains on."""
    return list(spec.get("eval", spec["tasks"]))


def to(media, device):
    return {k: v.to(device, non_blocking=True) for k, v in media.items()}


@torch.no_grad()
def answer(model, collator, prompts, max_new, device, temperature=0.0, top_k=None, ctx=nullcontext()):
    """The model's replies to prompt samples (see Collator.prompt): (texts, media). A text runs up
    to <eos>, each generated media item written as its marker; media[i] holds reply i's generated
    items by modality (decoded by the model's decode_media). Prompts of equal length are generated
    as one batch, so no padding is needed."""
    model.eval()
    encoded = [collator.encode(p)[0] for p in prompts]
    max_seq = getattr(model.cfg, "max_seq", None)
    if max_seq and max(map(len, encoded)) + max_new > max_seq:
        raise UserError(f"a prompt of {max(map(len, encoded))} positions plus {max_new} new tokens exceeds the "
                        f"model's max_seq={max_seq}: shorten the prompt, ask for fewer tokens or raise --max_seq")
    by_len, replies, items, eos = {}, [None] * len(prompts), [None] * len(prompts), collator.tok.eos
    for i, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(i)
    for rows in by_len.values():
        for j in range(0, len(rows), 256):
            idx = rows[j:j + 256]
            tokens = torch.tensor([encoded[i] for i in idx], device=device)
            with ctx:
                gen = model.generate(tokens, to(collator.pack_media([prompts[i] for i in idx]), device), max_new,
                                     temperature, top_k).tolist()
            for i, g in zip(idx, gen):
                g, items[i] = g[:g.index(eos)] if eos in g else g, {}
                if hasattr(model, "decode_media"):  # the model's private ids (e.g. VQ codes) -> markers + media
                    g, items[i] = model.decode_media(torch.tensor(g, dtype=torch.long))
                replies[i] = collator.tok.decode(g).strip()
    return replies, items


def has_answer(sample):
    """Does a sample end in an answer to a prompt? Only those can be judged (a text sample may be a
    bare sentence, judged by its loss alone)."""
    return len(sample["conversations"]) > 1 and sample["conversations"][-1]["from"] == "gpt"


def prompted(task, split, n, seed=0):
    """The judgeable ones of a toy task's first n samples."""
    return [s for s in (get_sample(task, split, i, seed) for i in range(n)) if has_answer(s)]


def summarise(samples, scores, exact):
    """{"score", "exact", "kinds"}: the judged score and exact match, and the score per question kind."""
    kinds = {}
    for s, v in zip(samples, scores):
        kinds.setdefault(s["kind"], []).append(v)
    mean = lambda v: sum(v) / len(v)
    return {"score": mean(scores), "exact": mean(exact), "kinds": {k: mean(v) for k, v in sorted(kinds.items())}}


def score_replies(model, collator, sets, device, ctx=nullcontext()):
    """Judge greedy replies to held-out samples, {task: samples} -> {task: summary} (data/judges.py);
    samples without a prompt to answer are left out."""
    out = {}
    for task, samples in sets.items():
        samples = [s for s in samples if has_answer(s)]
        if not samples:
            continue
        prompts, truths = zip(*map(Collator.prompt, samples))
        max_new = max(collator.length(t) for t in truths) + 1  # the answer's positions, media expanded, + <eos>
        replies, media = answer(model, collator, prompts, max_new, device, ctx=ctx)
        scores = [judge(task, s, r, m) for s, r, m in zip(samples, replies, media)]
        out[task] = summarise(samples, scores, [float(r == t) for r, t in zip(replies, truths)])
    return out


@torch.no_grad()
def score_objective(net, collator, sets, device, ctx=nullcontext()):
    """Teacher-forced exact match of a phase objective: its logits (B, K, vocab) predict each row's
    first K target tokens, and a row is right when all K argmaxes are."""
    net.eval()
    out = {}
    for task, samples in sets.items():
        right = []
        for j in range(0, len(samples), 64):
            b = collator(samples[j:j + 64])
            with ctx:
                logits, _, _ = net(b["tokens"].to(device), None, to(b["media"], device))
            pred, K = logits.argmax(-1).cpu(), logits.size(1)
            right += [float(torch.equal(p, t[t != IGNORE][:K])) for p, t in zip(pred, b["targets"])]
        out[task] = summarise(samples, right, right)
    return out


@torch.no_grad()
def mean_loss(net, collator, samples, device, ctx=nullcontext()):
    """Target-token-weighted mean loss over samples, as training weighs it: {"loss": total,
    "lm": the language-model part (total minus aux), "aux": {name: value}}."""
    net.eval()
    total, aux, count = 0.0, {}, 0
    for j in range(0, len(samples), 64):
        b = collator(samples[j:j + 64])
        tgt = b["targets"].to(device)
        with ctx:
            _, loss, terms = net(b["tokens"].to(device), tgt, to(b["media"], device))
        k = int((tgt != IGNORE).sum())
        total, count = total + float(loss) * k, count + k
        for name, v in terms.items():
            aux[name] = aux.get(name, 0.0) + float(v) * k
    count = max(count, 1)
    aux = {name: v / count for name, v in aux.items()}
    return {"loss": total / count, "lm": total / count - sum(aux.values()), "aux": aux}


# ----------------------------------------------------------------------------- log and plots

def plot(log_path, png_path):
    """Redraw the plots from the log alone: loss, held-out scores, and, where the model has them,
    its auxiliary loss terms and its diagnostics (whatever its diagnostics() names)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = [json.loads(line) for line in open(log_path)]
    train = [r for r in recs if r["kind"] == "train"]
    evals = [r for r in recs if r["kind"] == "eval"]
    aux = sorted({k for r in train for k in r.get("aux", {})})
    diag = sorted({k for r in evals for k in r.get("diagnostics", {})})
    panels = ["loss", "score"] + ["aux"] * bool(aux) + ["diagnostics"] * bool(diag)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    ax = dict(zip(panels, axes))
    ax["loss"].plot([r["gstep"] for r in train], [r["loss"] for r in train], lw=0.8, label="train")
    ax["loss"].plot([r["gstep"] for r in evals], [r["val_loss"] for r in evals], "o-", ms=3, label="val")
    ax["loss"].set(yscale="log", xlabel="step (all phases)", ylabel="loss", title="loss")
    for r in recs:
        if r["kind"] == "phase":
            for a in axes:
                a.axvline(r["gstep"], color="grey", lw=0.5, ls="--")
            ax["loss"].text(r["gstep"], ax["loss"].get_ylim()[1], r["phase"], fontsize=7, va="top")
    ax["loss"].legend()
    series = {}
    for r in evals:
        for task, res in r["scores"].items():
            for kind, v in res["kinds"].items():
                series.setdefault(f"{task}/{kind}", []).append((r["gstep"], v))
    for name, pts in series.items():
        ax["score"].plot(*zip(*pts), "o-", ms=3, label=name)
    ax["score"].set(xlabel="step (all phases)", ylabel="score", title="held-out score (val)", ylim=(0, 1.02))
    if series:
        ax["score"].legend(fontsize=7)
    for panel, names, rows, field in (("aux", aux, train, "aux"), ("diagnostics", diag, evals, "diagnostics")):
        for k in names:
            ax[panel].plot(*zip(*[(r["gstep"], r[field][k]) for r in rows if k in r.get(field, {})]), lw=0.8,
                           marker="o" if field == "diagnostics" else None, ms=2, label=k)
        if names:
            ax[panel].set(xlabel="step (all phases)", title="auxiliary loss terms" if panel == "aux" else panel)
            ax[panel].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


class Log:
    """Append-only JSONL metrics log, written by rank 0. Resuming cuts it back to the checkpoint."""

    def __init__(self, path, keep_until=None):
        self.path = path
        if keep_until is None:
            open(path, "w").close()
            return
        lines = open(path).read().splitlines() if os.path.exists(path) else []
        recs = []
        for k, line in enumerate(lines, 1):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                if k < len(lines):
                    raise UserError(f"{path} line {k} is not JSON: the log is damaged; start the run again")
                print(f"{path}: dropped a partial last line (the run was stopped while writing it)")
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs if r["gstep"] <= keep_until and r["kind"] != "final")

    def write(self, **rec):
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


# ----------------------------------------------------------------------------- optimisation

def lr_at(step, steps, peak, warmup, min_frac):
    """Linear warm-up, then cosine decay to min_frac * peak."""
    w = max(1, int(warmup * steps))
    if step < w:
        return peak * (step + 1) / w
    t = (step - w) / max(1, steps - w)
    return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def make_optimizer(model, lr, weight_decay, beta2, device_type, decay_by_prefix=None):
    """AdamW with decay on matrices (dim >= 2) only; norms, biases and gains are not decayed.
    On CPU and CUDA it is the fused kernel (one op for all parameters: ~3 ms a step less on CPU).
    decay_by_prefix (a phase's "weight_decay", e.g. {"decoder.blocks": 1.0}) gives the matrices
    whose name starts with a prefix their own decay; the others get `weight_decay`."""
    prefixes = decay_by_prefix or {}
    for k in prefixes:
        if not any(n.startswith(k + ".") for n, _ in model.named_parameters()):
            raise ValueError(f"weight_decay prefix {k!r} names no parameter of {type(model).__name__}")
    groups = {}  # decay -> params, in named_parameters order (resume relies on a fixed order)
    for n, p in model.named_parameters():
        if p.requires_grad:
            decay = next((d for k, d in prefixes.items() if n.startswith(k + ".")), weight_decay)
            groups.setdefault(decay if p.dim() >= 2 else 0.0, []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": d} for d, ps in groups.items()],
                             lr=lr, betas=(0.9, beta2), fused=device_type in ("cpu", "cuda") or None)


def held_out(record, share):
    """Is a user record in the held-out share? A hash of its id, so the split never moves."""
    h = int.from_bytes(hashlib.blake2b(str(record["id"]).encode(), digest_size=8).digest(), "little")
    return h % 10_000 < share * 10_000


# ----------------------------------------------------------------------------- the trainer

RUN_FILES = ("run.json", "log.jsonl", "plots.png", "results.json", "tokenizer.json")
RESUMABLE = ("model", "config", "phases", "grad_accum", "min_lr_frac", "warmup", "weight_decay", "beta2",
             "grad_clip", "seed", "data", "val_data", "val_share", "init_from")  # what a run *is*


class Trainer:
    """Everything is checked before anything is written: flags, checkpoints, the data, the run to
    resume. Only then does run() claim out_dir and train."""

    def __init__(self, args, mod, overrides):
        self.args, self.mod = args, mod
        self.ddp = "RANK" in os.environ
        if self.ddp:
            backend = "nccl" if torch.cuda.is_available() and args.device in ("auto", "cuda") else "gloo"
            dist.init_process_group(backend)
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1
        self.master = self.rank == 0
        self.device = self.pick_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        bf16 = args.dtype == "bf16" or (args.dtype == "auto" and self.device.type == "cuda")
        self.ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        self.phases = [args.phase] if args.phase else list(mod.PHASES)
        self.specs = dict(mod.PHASES)  # the recipe; its tasks are resolved once the Config is known
        self.resume = self.find_resume() if args.resume else None  # (run.json, its latest checkpoint)
        start = read_checkpoint(args.init_from) if args.init_from else None
        self.data = self.open_data() if args.data else None
        self.tok = self.pick_tokenizer(start)
        self.cfg = build_config(mod, self.tok, overrides)
        self.specs = recipe(mod, self.cfg)
        if args.tasks:
            self.specs[args.phase]["tasks"] = args.tasks
        if args.eval:
            self.specs[args.phase]["eval"] = args.eval
        for phase in self.phases:
            self.plan(phase)  # a plan that cannot run is refused before anything is written
        torch.manual_seed(args.seed)
        self.model = mod.Model(self.cfg).to(self.device)
        self.begun = []  # phases whose begin_phase these weights have been through (kept in checkpoints)
        if self.resume:
            self.check_same_run(self.resume[0])
            ck = self.resume[1]
            load_weights(self.model, ck["model"], self.ckpt_path(ck["phase"]))
            self.begun = list(ck.get("begun", []))
        elif start:
            sd, old = start["model"], start["config"].get("vocab_size")
            if old and old < self.cfg.vocab_size:  # a grown vocabulary (a --data run's fitted tokenizer)
                sd = grow_vocabulary(clean_state_dict(sd), self.model.state_dict(), old, self.cfg.vocab_size)
            load_weights(self.model, sd, args.init_from)
            self.begun = list(start.get("begun", []))
        self.collator = self.collator_for(self.phases[-1])
        if self.data:
            self.check_fit()
        self.log_path = os.path.join(args.out_dir, "log.jsonl")
        self.start = self.plotted = time.time()

    # -- set-up, all checks and no writes

    def pick_device(self, name):
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {name}: this machine has no CUDA device (try --device cpu)")
        if name == "mps" and not torch.backends.mps.is_available():
            raise UserError("--device mps: MPS is not available here (try --device cpu)")
        if name == "cuda":  # set_device needs an index: this process's GPU under torchrun, else the current one
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) if self.ddp else torch.cuda.current_device()}"
        if name.startswith("cuda"):
            torch.cuda.set_device(torch.device(name))
        return torch.device(name)

    def open_data(self):
        """{"train", "val"}: the user's records, every one checked now, and the held-out ones."""
        a = self.args
        objective = [p for p in self.phases if self.specs[p].get("objective")]
        if objective:
            raise UserError(f"--data replaces a phase's toy tasks, but phase {objective[0]!r} trains its own "
                            f"objective on toy data; choose the phases to run with --phase")
        folder = Folder(a.data, image_folder=a.image_folder)
        if a.val_data:
            return {"train": Subset(folder, range(len(folder))), "val": Folder(a.val_data, image_folder=a.image_folder)}
        val = [i for i, (_, s) in enumerate(folder.records) if held_out(s, a.val_share)]
        train = [i for i in range(len(folder)) if i not in set(val)]
        if not val or not train:
            raise UserError(f"--val_share {a.val_share} of {len(folder)} records leaves {len(train)} to train on and "
                            f"{len(val)} to judge: change --val_share, or give --val_data")
        return {"train": Subset(folder, train), "val": Subset(folder, val)}

    def check_fit(self):
        """Every user record must fit the model (its media, its length): all misfits are named now,
        not one at a time mid-run."""
        bad = []
        for part in self.data.values():
            folder = part.dataset if isinstance(part, Subset) else part
            for i in (part.indices if isinstance(part, Subset) else range(len(part))):
                where, s = folder.records[i]
                try:
                    self.collator.encode(s)
                except UserError as e:
                    bad.append(f"  {folder.file} {where}: {e}")
        if bad:
            raise UserError(f"{len(bad)} record{'s' * (len(bad) > 1)} do not fit {self.args.model}:\n"
                            + "\n".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""))

    def pick_tokenizer(self, start):
        """The run's own tokenizer on resume; a given one; for a --data run, the starting tokenizer
        grown by the words of the records; else the starting checkpoint's, or the toy world's."""
        a = self.args
        if self.resume:
            return Tokenizer(**self.resume[1]["tokenizer"])
        if a.tokenizer:
            try:
                return Tokenizer.load(a.tokenizer)
            except (OSError, ValueError, KeyError) as e:
                raise UserError(f"--tokenizer {a.tokenizer!r}: not a tokenizer file written by Tokenizer.save ({e})")
        base = Tokenizer(**start["tokenizer"]) if start else Tokenizer()
        if not self.data:
            return base
        train = self.data["train"]  # fitted on the training records only, so held-out words stay unseen
        texts = [t["value"] for i in train.indices for t in train.dataset.records[i][1]["conversations"]]
        return base.fit(texts, a.min_word_count)

    def plan(self, phase):
        """(steps, lr, batch_size, length_groups) of a phase: the flags if given, else the recipe's."""
        spec, a = self.specs[phase], self.args
        B = spec["batch_size"] if a.batch_size is None else a.batch_size
        # the recipe's groups shrink with a smaller --batch_size; asked for by flag, they must fit
        groups = min(spec.get("length_groups", 1), B) if a.length_groups is None else a.length_groups
        if groups > B:
            raise UserError(f"phase {phase!r}: length_groups {groups} is more than its batch of {B} rows; "
                            f"pass --length_groups {B} or fewer")
        return (spec["steps"] if a.steps is None else a.steps, spec["lr"] if a.lr is None else a.lr, B, groups)

    def identity(self):
        """What this run is: resuming it with any of these changed would train something else."""
        a = self.args
        run = {k: getattr(a, k) for k in RESUMABLE if hasattr(a, k)}
        run["config"] = dataclasses.asdict(self.cfg)
        plan = ("steps", "lr", "batch_size", "length_groups")
        run["phases"] = {p: dict(zip(plan, self.plan(p)), tasks=self.specs[p]["tasks"], eval=eval_tasks(self.specs[p]))
                         for p in self.phases}
        return run

    def find_resume(self):
        """The run in out_dir (its run.json) and its latest checkpoint by global step. A checkpoint
        that another run left in the folder is never taken."""
        a = self.args
        path = os.path.join(a.out_dir, "run.json")
        if not os.path.isfile(path):
            raise UserError(f"--resume: {a.out_dir} holds no run to resume (no run.json); start one without --resume")
        with open(path) as f:
            run = json.load(f)
        mine = [c for c in (read_checkpoint(self.ckpt_path(p)) for p in run["phases"]
                            if os.path.isfile(self.ckpt_path(p))) if c.get("run") == run]
        if not mine:
            raise UserError(f"--resume: the run in {a.out_dir} stopped before its first checkpoint; start it again "
                            f"with --overwrite")
        return run, max(mine, key=lambda c: c["gstep"])

    def check_same_run(self, run):
        """--resume with other flags than the run's own would silently train something else: refuse,
        naming each difference."""
        def differences(was, now, where=""):
            if isinstance(was, dict) and isinstance(now, dict):
                return [d for k in sorted(set(was) | set(now)) for d in differences(was.get(k), now.get(k), where + k + ".")]
            return [] if was == now else [f"{where[:-1]}: {was!r} in the run, {now!r} now"]
        diffs = differences(run, json.loads(json.dumps(self.identity())))
        if diffs:
            raise UserError(f"--resume continues the run in {self.args.out_dir} as it was started; these differ:\n  "
                            + "\n  ".join(diffs) + "\npass the run's own flags, or start a new run in another --out_dir")

    def ckpt_path(self, phase):
        return os.path.join(self.args.out_dir, f"{phase}.pt")

    def collator_for(self, phase):
        return phase_collator(self.model, self.tok, self.specs[phase])

    def net_for(self, phase):
        return phase_net(self.model, self.specs[phase])

    # -- the run

    def run(self):
        """Claim out_dir, train each phase of the plan in order from where a resumed run stopped,
        then report on held-out data."""
        resume = self.resume[1] if self.resume else None
        gstep = resume["gstep"] if resume else 0
        self.claim_out_dir(gstep)
        todo = self.phases[self.phases.index(resume["phase"]):] if resume else self.phases
        for phase in todo:
            state = resume if resume and phase == resume["phase"] else None
            if state and state["done"]:
                continue  # the checkpoint ends this phase: go on with the next one
            gstep = self.train_phase(phase, gstep, state)
        self.model.set_phase(self.phases[-1])
        results = self.final_report(gstep) if self.master and not self.args.no_final_eval else None
        if self.master:
            plot(self.log_path, os.path.join(self.args.out_dir, "plots.png"))
            print(f"checkpoint: {self.ckpt_path(self.phases[-1])}\nlog: {self.log_path}\n"
                  f"plots: {os.path.join(self.args.out_dir, 'plots.png')}")
            if results is not None:
                print(f"results: {os.path.join(self.args.out_dir, 'results.json')}")
        if self.ddp:
            dist.destroy_process_group()
        return results

    def claim_out_dir(self, gstep):
        """A fresh run refuses a folder that holds another run unless --overwrite (then it clears
        that run's files); a resumed one cuts its log back to the checkpoint."""
        a = self.args
        if self.master:
            if self.resume:
                self.log = Log(self.log_path, keep_until=gstep)
            else:
                files = [f for f in RUN_FILES + tuple(f"{p}.pt" for p in self.mod.PHASES)
                         if os.path.exists(os.path.join(a.out_dir, f))]
                if files and not a.overwrite:
                    raise UserError(f"{a.out_dir} holds another run ({', '.join(files)}): pass --resume to continue it, "
                                    f"another --out_dir, or --overwrite to replace it")
                os.makedirs(a.out_dir, exist_ok=True)
                for f in files:
                    os.remove(os.path.join(a.out_dir, f))
                save_atomic(self.identity(), os.path.join(a.out_dir, "run.json"))
                if a.data:
                    self.tok.save(os.path.join(a.out_dir, "tokenizer.json"))
                self.log = Log(self.log_path)
        if self.ddp:
            dist.barrier()

    def train_data(self, phase, n):
        """n training samples of a phase: its toy task mixture, or the user's records in epochs."""
        if self.data:
            return Epochs(self.data["train"], n, self.args.seed)
        return Mixture(self.specs[phase]["tasks"], "train", n, self.args.seed)

    def deadline(self, phase):
        """When a time budget ends this phase: the budget shared by the phases' step counts."""
        if not self.args.max_minutes:
            return None
        steps = [self.plan(p)[0] for p in self.phases]
        share = sum(steps[:self.phases.index(phase) + 1]) / sum(steps)
        return self.start + 60 * self.args.max_minutes * share

    def train_phase(self, phase, gstep, state):
        a, spec = self.args, self.specs[phase]
        steps, peak_lr, B, groups = self.plan(phase)
        self.model.set_phase(phase)
        if state is None and phase not in self.begun:  # a fresh start: the phase's one-time set-up
            if hasattr(self.model, "begin_phase"):
                self.model.begin_phase(phase)
            self.begun.append(phase)
        net = self.net_for(phase)
        net = torch.compile(net) if a.compile else net
        if self.ddp:
            net = DDP(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        opt = make_optimizer(self.model, peak_lr, a.weight_decay, a.beta2, self.device.type, spec.get("weight_decay"))
        step = 0
        if state:  # exact resume: weights were loaded; now optimizer, step, RNG and data position
            opt.load_state_dict(state["optimizer"])
            step = state["step"]
            torch.set_rng_state(state["rng"]["torch"])
            random.setstate(state["rng"]["python"])
            if torch.cuda.is_available() and "cuda" in state["rng"]:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        elif self.master:
            self.log.write(kind="phase", phase=phase, gstep=gstep)
        per_step = B * a.grad_accum  # items one rank reads per optimizer step
        collate = functools.partial(self.collator_for(phase).by_length, groups=groups)
        loader = iter(make_loader(self.train_data(phase, steps * per_step * self.world), collate, B,
                                  self.rank, self.world, start=step * per_step, workers=a.workers))
        eval_every = a.eval_every or -(-steps // 4)  # ceil: at most 4 evaluations, the last at the end
        deadline = self.deadline(phase)
        bar = tqdm(total=steps, initial=step, desc=phase, disable=not self.master, dynamic_ncols=True)
        while step < steps:
            t0 = time.time()
            lr = lr_at(step, steps, peak_lr, a.warmup, a.min_lr_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            batches = [b for _ in range(a.grad_accum) for b in next(loader)]
            # weight each micro-batch by its share of the global count of target tokens, so that
            # any split over ranks and micro-batches gives the gradient of one big batch
            counts = torch.tensor([float((b["targets"] != IGNORE).sum()) for b in batches])
            total = counts.sum().to(self.device)
            if self.ddp:
                dist.all_reduce(total)
            net.train()
            loss_sum, aux_sum = torch.zeros((), device=self.device), {}
            for k, b in enumerate(batches):
                sync = nullcontext() if (k == len(batches) - 1 or not self.ddp) else net.no_sync()  # all-reduce once
                with sync, self.ctx:
                    _, loss, aux = net(b["tokens"].to(self.device), b["targets"].to(self.device), to(b["media"], self.device))
                    w = counts[k] / total * self.world  # DDP averages over ranks: undo that
                    (loss * w).backward()
                share = counts[k] / total  # the aux terms are weighed as the loss they are part of
                loss_sum += loss.detach() * share
                for name, v in aux.items():
                    aux_sum[name] = aux_sum.get(name, 0.0) + torch.as_tensor(v, device=self.device).detach().float() * share
            if a.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            names = sorted(aux_sum)
            logged = torch.stack([loss_sum.float(), *(aux_sum[n] for n in names)])
            if self.ddp:  # every rank's share of the global mean, summed
                dist.all_reduce(logged)
            loss_value, *aux_values = logged.tolist()
            aux_sum = dict(zip(names, aux_values))
            step, gstep = step + 1, gstep + 1
            ntok = sum(b["tokens"].numel() for b in batches) * self.world
            dt = time.time() - t0
            if self.master:
                self.log.write(kind="train", phase=phase, step=step, gstep=gstep, loss=loss_value,
                               lm=loss_value - sum(aux_values), aux=aux_sum, lr=lr, tok_per_s=ntok / dt,
                               time=time.time() - self.start)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.1e}", tok_s=f"{ntok / dt:,.0f}")
                bar.update(1)
            out_of_time = deadline is not None and time.time() > deadline
            if self.ddp and deadline is not None:  # every rank stops at the same step, or DDP hangs
                flag = torch.tensor(float(out_of_time), device=self.device)
                dist.all_reduce(flag)
                out_of_time = bool(flag > 0)
            if out_of_time and self.master:
                print(f"\n{phase}: time budget reached at step {step}/{steps}; moving on")
            if step % eval_every == 0 or step == steps or out_of_time:
                self.evaluate(phase, step, gstep, last=step == steps or out_of_time)
                self.save(phase, step, gstep, opt, done=step == steps or out_of_time)
            if out_of_time:
                break
        bar.close()
        return gstep

    # -- evaluation and checkpoints

    def judge_sets(self, tasks, split, n):
        """{task: held-out samples} to judge: the toy tasks' split, or the user's held-out records."""
        if self.data:
            sets = {}
            for s in (self.data["val"][i] for i in range(min(n, len(self.data["val"])))):
                sets.setdefault(s["task"], []).append(s)
            return sets
        return {t: [get_sample(t, split, i, self.args.seed) for i in range(n)] for t in tasks}

    def val_samples(self, spec, n):
        """Held-out samples of a phase's task mixture (or the user's records), for its val loss."""
        if self.data:
            return [self.data["val"][i] for i in range(min(n, len(self.data["val"])))]
        ds = Mixture(spec["tasks"], "val", n, self.args.seed)
        return [ds[i] for i in range(n)]

    def scores(self, phase, split, n, tasks=None):
        spec = self.specs[phase]
        judged = score_objective if spec.get("objective") else score_replies
        return judged(self.net_for(phase), self.collator_for(phase), self.judge_sets(tasks or eval_tasks(spec), split, n),
                      self.device, self.ctx)

    def evaluate(self, phase, step, gstep, last=False):
        """Val loss (the language-model part and each aux term) and judged val scores of the phase's
        tasks; the model's diagnostics; at the phase's end, the test loss on text, so that what a
        phase does to the language model is a logged number."""
        if self.master:
            a, spec = self.args, self.specs[phase]
            val = mean_loss(self.net_for(phase), self.collator_for(phase), self.val_samples(spec, a.eval_samples),
                            self.device, self.ctx)
            scores = self.scores(phase, "val", a.eval_samples)
            rec = dict(kind="eval", phase=phase, step=step, gstep=gstep, val_loss=val["loss"], val_lm=val["lm"],
                       val_aux=val["aux"], scores=scores)
            if hasattr(self.model, "diagnostics"):
                rec["diagnostics"] = {k: float(v) for k, v in self.model.diagnostics().items()}
            if last and not self.data:
                text = [get_sample("text", "test", i, a.seed) for i in range(a.final_samples)]
                rec["text_test_loss"] = mean_loss(self.model, Collator(self.tok, self.model.media_tokens), text,
                                                  self.device, self.ctx)["lm"]
            self.log.write(**rec)
            if last or time.time() - self.plotted > 60:  # a plot takes ~0.5 s on a CPU: at most once a minute
                plot(self.log_path, os.path.join(a.out_dir, "plots.png"))
                self.plotted = time.time()
            terms = "".join(f", {k} {v:.4f}" for k, v in val["aux"].items())
            summary = " ".join(f"{t}={r['score']:.3f}" for t, r in scores.items())
            tqdm.write(f"[{phase} {step}] val loss {val['loss']:.4f} (lm {val['lm']:.4f}{terms})  score {summary}")
        if self.ddp:
            dist.barrier()

    def save(self, phase, step, gstep, opt, done):
        if self.master:
            rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            save_atomic({"model": clean_state_dict(self.model.state_dict()), "optimizer": opt.state_dict(),
                         "model_name": self.args.model, "phase": phase, "step": step, "gstep": gstep,
                         "done": done, "begun": self.begun, "config": dataclasses.asdict(self.cfg), "rng": rng,
                         "tokenizer": {"words": self.tok.words, "punctuation": self.tok.punctuation,
                                       "specials": self.tok.specials},
                         "run": json.loads(json.dumps(self.identity())), "args": vars(self.args)},
                        self.ckpt_path(phase))
        if self.ddp:
            dist.barrier()

    def loss_tasks(self):
        """Every toy task the recipe trains through forward, and text, that this model can take."""
        names = ["text"] + [t for spec in self.specs.values() if not spec.get("objective") for t in spec["tasks"]]
        takes = lambda t: {m["type"] for m in get_sample(t, "test", 0)["media"]} <= set(self.model.media_tokens)
        return [t for t in dict.fromkeys(names) if takes(t)]

    def final_report(self, gstep):
        """The finished model's judged scores on the test split and, for tasks that data/ gives one, the
        compose split (held-out attribute combinations); the test loss of every task it trained on,
        text included; and the text test loss after each phase, read from the log. A --data run is
        judged on its held-out records instead."""
        a, last, n = self.args, self.phases[-1], self.args.final_samples
        tasks = eval_tasks(self.specs[last])
        res = {"minutes": (time.time() - self.start) / 60}
        for split, names in (("test", tasks), ("compose", [t for t in tasks if t in COMPOSE and not self.data])):
            res[split] = self.scores(last, split, n, names) if names else {}
            for t, r in res[split].items():
                kinds = "  ".join(f"{k} {v:.3f}" for k, v in r["kinds"].items())
                also = f" (exact match {r['exact']:.3f})" if judge_name(t) != "exact match" else ""
                print(f"{split:8s} {t:14s} {judge_name(t)} {r['score']:.3f}{also}   ({kinds})")
        sets = self.judge_sets(self.loss_tasks(), "test", n)
        res["test_loss"] = {t: mean_loss(self.model, self.collator_for(last), s, self.device, self.ctx)["lm"]
                            for t, s in sets.items()}
        print("test loss  " + "  ".join(f"{t} {v:.4f}" for t, v in res["test_loss"].items()))
        res["text_loss_after"] = {r["phase"]: r["text_test_loss"] for r in map(json.loads, open(self.log_path))
                                  if "text_test_loss" in r}
        if res["text_loss_after"]:
            print("text test loss after each phase  "
                  + "  ".join(f"{p} {v:.4f}" for p, v in res["text_loss_after"].items()))
        print(f"total time {res['minutes']:.1f} min")
        save_atomic(res, os.path.join(a.out_dir, "results.json"))
        self.log.write(kind="final", gstep=gstep, **res)
        return res


def main(argv=None):
    try:
        args, mod, overrides = parse_args(argv)
        random.seed(args.seed)
        return Trainer(args, mod, overrides).run()
    except UserError as e:  # something the user gave is wrong: say what, in a line; a bug keeps its traceback
        print(f"train.py: error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
