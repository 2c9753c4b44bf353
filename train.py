"""Train any nano model on the toy world: every phase of its recipe, on one device or many.

    python train.py --model llava                      # the whole default recipe, all phases in order
    python train.py --model llava --phase instruct --init_from out/llava/align.pt
    python train.py --model llava --resume             # continue exactly where a run stopped
    torchrun --nproc_per_node 2 train.py --model llava # DDP (nccl on GPU, gloo on CPU)
    python train.py --model llava --n_layer 6 --lr 5e-4  # any Config field or knob is a flag

The trainer knows only the model contract (DESIGN.md section 2): Config, Model(cfg).media_tokens,
forward(tokens, targets, media) -> (logits, loss, aux), generate(...), PHASES and set_phase(name).
Per phase it writes out_dir/<phase>.pt (atomically), appends to out_dir/log.jsonl and redraws
out_dir/plots.png; at the end it writes out_dir/results.json with held-out accuracy.
"""
import argparse
import dataclasses
import importlib
import json
import math
import os
import random
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import COMPOSE, IGNORE, Collator, Folder, Mixture, Tokenizer, get_sample, judge, make_loader
from data.judges import judge_name

MODELS = {"llava": "nano_llava", "flamingo": "nano_flamingo", "cogvlm": "nano_cogvlm",
          "chameleon": "nano_chameleon", "unimoe": "nano_unimoe"}


# ----------------------------------------------------------------------------- arguments

def model_module(name):
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    try:
        return importlib.import_module(MODELS[name])
    except ModuleNotFoundError as e:
        if e.name != MODELS[name]:
            raise
        raise SystemExit(f"model {name!r} is not implemented yet ({MODELS[name]}.py is missing)")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", required=True, help=f"one of {', '.join(MODELS)}")
    a("--phase", default=None, help="run only this phase (default: every phase of the recipe in order)")
    a("--out_dir", default=None, help="where checkpoints, log and plots go (default out/<model>)")
    a("--init_from", default=None, help="start from this checkpoint's weights (e.g. the previous phase)")
    a("--resume", action="store_true", help="continue the run in out_dir exactly where it stopped")
    a("--steps", type=int, default=None, help="optimizer steps per phase (default: the phase's own)")
    a("--batch_size", type=int, default=None, help="samples per micro-batch per process")
    a("--grad_accum", type=int, default=1, help="micro-batches per optimizer step")
    a("--lr", type=float, default=None, help="peak learning rate (default: the phase's own)")
    a("--min_lr_frac", type=float, default=0.1, help="cosine decays to this fraction of the peak")
    a("--warmup", type=float, default=0.05, help="warm-up, as a fraction of the phase's steps")
    a("--weight_decay", type=float, default=0.1, help="AdamW decay, on matrices only (a phase may set its own "
      "for some parameters: PHASES weight_decay)")
    a("--beta2", type=float, default=0.95)
    a("--grad_clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    a("--eval_every", type=int, default=0, help="evaluate every N steps (default: ceil(steps/4), and at the end)")
    a("--eval_samples", type=int, default=100, help="held-out samples per task for accuracy, and for val loss")
    a("--final_samples", type=int, default=500, help="samples per task for the final test/compose report")
    a("--data", default=None, help="train on this on-disk dataset folder instead of the toy world")
    a("--seed", type=int, default=0)
    a("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    a("--dtype", default="auto", help="auto (bf16 autocast on CUDA, fp32 elsewhere), bf16 or fp32")
    a("--compile", action="store_true", help="torch.compile the model (worth it on GPU)")
    a("--threads", type=int, default=0, help="CPU threads per process (default: torch's)")
    a("--workers", type=int, default=0, help="DataLoader worker processes")
    a("--max_minutes", type=float, default=0, help="time budget for the whole run, shared by phase length")
    a("--no_final_eval", action="store_true", help="skip the final test/compose accuracy report")
    return p


def parse_args(argv=None):
    """The trainer's flags, then the model's Config fields as --field value."""
    args, rest = build_parser().parse_known_args(argv)
    mod = model_module(args.model)
    fields = {f.name: f for f in dataclasses.fields(mod.Config)}
    overrides, i = {}, 0
    while i < len(rest):
        key, _, val = rest[i].removeprefix("--").partition("=")
        if not rest[i].startswith("--") or key not in fields:
            raise SystemExit(f"unknown flag {rest[i]!r}: not a train.py flag nor a {args.model} Config field "
                             f"({', '.join(fields)})")
        if not val:
            if i + 1 >= len(rest):
                raise SystemExit(f"flag --{key} needs a value")
            val, i = rest[i + 1], i + 1
        kind = type(fields[key].default)
        try:
            overrides[key] = (val.lower() in ("1", "true", "yes")) if kind is bool else kind(val)
        except ValueError:
            raise SystemExit(f"--{key} expects a {kind.__name__}, got {val!r}")
        i += 1
    if args.phase is not None and args.phase not in mod.PHASES:
        raise SystemExit(f"unknown phase {args.phase!r} for {args.model}; phases: {', '.join(mod.PHASES)}")
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


def load_weights(model, sd, source):
    """Strict load that says which keys are missing or unexpected, and which shapes differ."""
    sd, own = clean_state_dict(sd), model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{source} does not fit this model (was it trained with another model or Config?)\n"
                         f"  missing keys: {missing[:8]}{' ...' if len(missing) > 8 else ''}\n"
                         f"  unexpected keys: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}\n"
                         f"  shape mismatches: {wrong[:8]}")
    model.load_state_dict(sd, strict=True)


def read_checkpoint(path):
    """A checkpoint is data, never code: weights_only=True refuses pickled objects."""
    if not os.path.isfile(path):
        raise SystemExit(f"checkpoint {path!r} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SystemExit(f"checkpoint {path!r} is unreadable or corrupt, or holds more than tensors and "
                         f"plain data ({type(e).__name__}: {first})")


def save_atomic(obj, path):
    """Write to a temp file, then rename: a crash mid-write never leaves a broken checkpoint."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def build_config(mod, tok, overrides=None):
    """A model's Config: the tokenizer fills the vocabulary size and every special-token id field
    (image_id <- <image>, eos_id <- <eos>, ...), then the overrides."""
    fill = {"vocab_size": len(tok)}
    fill.update({f.name: tok.stoi[f"<{f.name[:-3]}>"] for f in dataclasses.fields(mod.Config)
                 if f.name.endswith("_id") and f"<{f.name[:-3]}>" in tok.stoi})
    return mod.Config(**{**fill, **(overrides or {})})


def load_model(path, device="cpu"):
    """Rebuild (model, tokenizer, checkpoint) from a checkpoint alone. Used by sample.py, bench.py."""
    ck = read_checkpoint(path)
    mod = model_module(ck["model_name"])
    model = mod.Model(mod.Config(**ck["config"]))
    load_weights(model, ck["model"], path)
    model.set_phase(ck["phase"])
    tok = Tokenizer(**ck["tokenizer"])
    return model.to(device).eval(), tok, ck


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
        raise ValueError(f"a prompt of {max(map(len, encoded))} positions plus {max_new} new tokens exceeds the "
                         f"model's max_seq={max_seq}: shorten the prompt, ask for fewer tokens or raise --max_seq")
    by_len, replies, items, eos = {}, [None] * len(prompts), [None] * len(prompts), collator.tok.eos
    for i, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(i)
    for rows in by_len.values():
        for j in range(0, len(rows), 256):
            idx = rows[j:j + 256]
            tokens = torch.tensor([encoded[i] for i in idx], device=device)
            media = {k: v.to(device) for k, v in collator.pack_media([prompts[i] for i in idx]).items()}
            with ctx:
                gen = model.generate(tokens, media, max_new, temperature, top_k).tolist()
            for i, g in zip(idx, gen):
                g, items[i] = g[:g.index(eos)] if eos in g else g, {}
                if hasattr(model, "decode_media"):  # the model's private ids (e.g. VQ codes) -> markers + media
                    g, items[i] = model.decode_media(torch.tensor(g, dtype=torch.long))
                replies[i] = collator.tok.decode(g).strip()
    return replies, items


def summarise(samples, scores, exact):
    """{"score", "exact", "kinds"}: the judged score and exact match, and the score per question kind."""
    kinds = {}
    for s, v in zip(samples, scores):
        kinds.setdefault(s["kind"], []).append(v)
    mean = lambda v: sum(v) / len(v)
    return {"score": mean(scores), "exact": mean(exact), "kinds": {k: mean(v) for k, v in sorted(kinds.items())}}


def has_answer(sample):
    """Does a sample end in an answer to a prompt? Only those can be judged (a text sample may be a
    bare sentence, judged by its loss alone)."""
    return len(sample["conversations"]) > 1 and sample["conversations"][-1]["from"] == "gpt"


def prompted(task, split, n, seed=0):
    """The judgeable ones of a task's first n samples."""
    return [s for s in (get_sample(task, split, i, seed) for i in range(n)) if has_answer(s)]


def score_replies(model, collator, tasks, split, n, device, seed=0, ctx=nullcontext()):
    """Judge greedy replies to the prompted ones of n held-out samples per task (data/judges.py)."""
    out = {}
    for task in tasks:
        samples = prompted(task, split, n, seed)
        if not samples:
            continue
        prompts, truths = zip(*map(Collator.prompt, samples))
        max_new = max(collator.length(t) for t in truths) + 1  # the answer's positions, media expanded, + <eos>
        replies, media = answer(model, collator, prompts, max_new, device, ctx=ctx)
        scores = [judge(task, s, r, m) for s, r, m in zip(samples, replies, media)]
        out[task] = summarise(samples, scores, [float(r == t) for r, t in zip(replies, truths)])
    return out


@torch.no_grad()
def score_objective(net, collator, tasks, split, n, device, seed=0, ctx=nullcontext()):
    """Teacher-forced exact match of a phase objective: its logits (B, K, vocab) predict each row's
    first K target tokens, and a row is right when all K argmaxes are."""
    net.eval()
    out = {}
    for task in tasks:
        samples = [get_sample(task, split, i, seed) for i in range(n)]
        right = []
        for j in range(0, n, 64):
            b = collator(samples[j:j + 64])
            with ctx:
                logits, _, _ = net(b["tokens"].to(device), None, {k: v.to(device) for k, v in b["media"].items()})
            pred, K = logits.argmax(-1).cpu(), logits.size(1)
            right += [float(torch.equal(p, t[t != IGNORE][:K])) for p, t in zip(pred, b["targets"])]
        out[task] = summarise(samples, right, right)
    return out


@torch.no_grad()
def mean_loss(net, collator, tasks, split, n, device, seed=0, ctx=nullcontext()):
    """Target-token-weighted mean loss over n samples of a task mixture, as training weighs it:
    {"loss": total, "lm": the language-model part (total minus aux), "aux": {name: value}}."""
    net.eval()
    ds = Mixture(tasks, split, n, seed)
    total, aux, count = 0.0, {}, 0
    for j in range(0, n, 64):
        b = collator([ds[i] for i in range(j, min(j + 64, n))])
        tgt = b["targets"].to(device)
        with ctx:
            _, loss, terms = net(b["tokens"].to(device), tgt, {k: v.to(device) for k, v in b["media"].items()})
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
    """Append-only JSONL metrics log, written by rank 0."""

    def __init__(self, path, keep_until=None):
        self.path = path
        if keep_until is not None and os.path.exists(path):  # resume: drop what came after the checkpoint
            recs = [json.loads(line) for line in open(path)]
            with open(path, "w") as f:
                for r in recs:
                    if r["gstep"] <= keep_until and r["kind"] != "final":
                        f.write(json.dumps(r) + "\n")

    def write(self, **rec):
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


# ----------------------------------------------------------------------------- training

def eval_tasks(spec):
    """The tasks a phase is judged on: its "eval" list if it has one, else the tasks it trains on."""
    return list(spec.get("eval", spec["tasks"]))


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


class Trainer:
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
        self.tok = Tokenizer()
        self.cfg = build_config(mod, self.tok, overrides)
        torch.manual_seed(args.seed)
        self.model = mod.Model(self.cfg).to(self.device)
        self.phases = [args.phase] if args.phase else list(mod.PHASES)
        self.collator = self.collator_for(self.phases[-1])
        self.begun = []  # phases whose begin_phase these weights have been through (kept in checkpoints)
        os.makedirs(args.out_dir, exist_ok=True)
        self.log_path = os.path.join(args.out_dir, "log.jsonl")
        self.start = self.plotted = time.time()

    def pick_device(self, name):
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        if name == "cuda":  # set_device needs an index: this process's GPU under torchrun, else the current one
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) if self.ddp else torch.cuda.current_device()}"
        if name.startswith("cuda"):
            torch.cuda.set_device(torch.device(name))
        return torch.device(name)

    def plan(self, phase):
        """(steps, lr, batch_size) of a phase: the flags if given, else the recipe's."""
        spec, a = self.mod.PHASES[phase], self.args
        return a.steps or spec["steps"], a.lr or spec["lr"], a.batch_size or spec["batch_size"]

    def collator_for(self, phase):
        return phase_collator(self.model, self.tok, self.mod.PHASES[phase])

    def net_for(self, phase):
        return phase_net(self.model, self.mod.PHASES[phase])

    def ckpt_path(self, phase):
        return os.path.join(self.args.out_dir, f"{phase}.pt")

    def run(self):
        a = self.args
        resume_from = None
        if a.init_from:
            ck = read_checkpoint(a.init_from)
            load_weights(self.model, ck["model"], a.init_from)
            self.begun = list(ck.get("begun", []))
        if a.resume:  # the last phase with a checkpoint decides where we are
            done = [p for p in self.phases if os.path.exists(self.ckpt_path(p))]
            if not done:
                raise SystemExit(f"--resume: no checkpoint of phases {self.phases} in {a.out_dir}")
            resume_from = read_checkpoint(self.ckpt_path(done[-1]))
            if resume_from["config"] != dataclasses.asdict(self.cfg):
                raise SystemExit(f"--resume: {self.ckpt_path(done[-1])} was trained with another Config; "
                                 f"pass the same --field overrides as the original run")
            load_weights(self.model, resume_from["model"], self.ckpt_path(done[-1]))
            self.begun = list(resume_from.get("begun", []))
        gstep = resume_from["gstep"] if resume_from else 0
        if self.master:
            self.log = Log(self.log_path, keep_until=gstep if resume_from else None)
            if not resume_from and os.path.exists(self.log_path):
                os.remove(self.log_path)
        total_steps = sum(self.plan(p)[0] for p in self.phases)
        elapsed_steps = 0
        for phase in self.phases:
            state = None
            if resume_from:
                if self.phases.index(phase) < self.phases.index(resume_from["phase"]):
                    elapsed_steps += self.plan(phase)[0]
                    continue
                if phase == resume_from["phase"]:
                    state, resume_from = resume_from, None
                    if state["done"]:
                        elapsed_steps += self.plan(phase)[0]
                        continue
            elapsed_steps += self.plan(phase)[0]
            deadline = self.start + 60 * a.max_minutes * elapsed_steps / total_steps if a.max_minutes else None
            gstep = self.train_phase(phase, gstep, state, deadline)
        self.model.set_phase(self.phases[-1])
        results = None
        if self.master and not a.no_final_eval:
            results = self.final_report()
        if self.master:
            plot(self.log_path, os.path.join(a.out_dir, "plots.png"))
            print(f"checkpoint: {self.ckpt_path(self.phases[-1])}\nlog: {self.log_path}\n"
                  f"plots: {os.path.join(a.out_dir, 'plots.png')}")
            if results is not None:
                print(f"results: {os.path.join(a.out_dir, 'results.json')}")
        if self.ddp:
            dist.destroy_process_group()
        return results

    def train_phase(self, phase, gstep, state, deadline):
        a, spec = self.args, self.mod.PHASES[phase]
        steps, peak_lr, B = self.plan(phase)
        self.model.set_phase(phase)
        if state is None and phase not in self.begun:  # a fresh start: the phase's one-time set-up
            if hasattr(self.model, "begin_phase"):
                self.model.begin_phase(phase)
            self.begun.append(phase)
        net = self.net_for(phase)
        net = torch.compile(net) if a.compile else net
        if self.ddp:
            net = DDP(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        opt = make_optimizer(self.model, peak_lr, a.weight_decay, a.beta2, self.device.type,
                             spec.get("weight_decay"))
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
        if a.data:
            ds, shuffle = Folder(a.data), True
            ds = torch.utils.data.Subset(ds, [i % len(ds) for i in range(steps * per_step * self.world)])
        else:
            ds, shuffle = Mixture(spec["tasks"], "train", steps * per_step * self.world, a.seed), False
        loader = iter(make_loader(ds, self.collator_for(phase), B, self.rank, self.world, start=step * per_step,
                                  workers=a.workers, shuffle=shuffle, seed=a.seed))
        eval_every = a.eval_every or -(-steps // 4)  # ceil: at most 4 evaluations, the last at the end
        bar = tqdm(total=steps, initial=step, desc=phase, disable=not self.master, dynamic_ncols=True)
        while step < steps:
            t0 = time.time()
            lr = lr_at(step, steps, peak_lr, a.warmup, a.min_lr_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            batches = [next(loader) for _ in range(a.grad_accum)]
            # weight each micro-batch by its share of the global count of target tokens, so that
            # any split over ranks and micro-batches gives the gradient of one big batch
            counts = torch.tensor([float((b["targets"] != IGNORE).sum()) for b in batches])
            total = counts.sum().to(self.device)
            if self.ddp:
                dist.all_reduce(total)
            net.train()
            loss_sum, aux_sum = torch.zeros((), device=self.device), {}
            for k, b in enumerate(batches):
                last = k == len(batches) - 1
                media = {m: v.to(self.device, non_blocking=True) for m, v in b["media"].items()}
                sync = nullcontext() if (last or not self.ddp) else net.no_sync()  # all-reduce once
                with sync, self.ctx:
                    _, loss, aux = net(b["tokens"].to(self.device), b["targets"].to(self.device), media)
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
            logged = logged.tolist()
            loss_value, aux_sum = logged[0], dict(zip(names, logged[1:]))
            step, gstep = step + 1, gstep + 1
            ntok = sum(b["tokens"].numel() for b in batches) * self.world
            dt = time.time() - t0
            if self.master:
                self.log.write(kind="train", phase=phase, step=step, gstep=gstep, loss=loss_value,
                               lm=loss_value - sum(aux_sum.values()), aux=aux_sum, lr=lr, tok_per_s=ntok / dt,
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

    def evaluate(self, phase, step, gstep, last=False):
        """Val loss (the language-model part and each aux term) and judged val scores of the phase's
        tasks; the model's diagnostics; at the phase's end, the test loss on text, so that what a
        phase does to the language model is a logged number."""
        if self.master:
            a, spec = self.args, self.mod.PHASES[phase]
            net, collator = self.net_for(phase), self.collator_for(phase)
            val = mean_loss(net, collator, spec["tasks"], "val", a.eval_samples, self.device, a.seed, self.ctx)
            judged = score_objective if spec.get("objective") else score_replies
            scores = judged(net, collator, eval_tasks(spec), "val", a.eval_samples, self.device, a.seed, self.ctx)
            rec = dict(kind="eval", phase=phase, step=step, gstep=gstep, val_loss=val["loss"], val_lm=val["lm"],
                       val_aux=val["aux"], scores=scores)
            if hasattr(self.model, "diagnostics"):
                rec["diagnostics"] = {k: float(v) for k, v in self.model.diagnostics().items()}
            if last:
                rec["text_test_loss"] = mean_loss(self.model, Collator(self.tok, self.model.media_tokens), ["text"],
                                                  "test", a.final_samples, self.device, a.seed, self.ctx)["lm"]
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
                         "args": {k: v for k, v in vars(self.args).items()}}, self.ckpt_path(phase))
        if self.ddp:
            dist.barrier()

    def loss_tasks(self):
        """Every task the recipe trains through forward, and text, that this model can take."""
        names = ["text"] + [t for spec in self.mod.PHASES.values() if not spec.get("objective") for t in spec["tasks"]]
        takes = lambda t: {m["type"] for m in get_sample(t, "test", 0)["media"]} <= set(self.model.media_tokens)
        return [t for t in dict.fromkeys(names) if takes(t)]

    def final_report(self):
        """The finished model's judged scores on the test split and, for tasks that data/ gives one, the
        compose split (held-out attribute combinations); the test loss of every task it trained on,
        text included; and the text test loss after each phase, read from the log."""
        a, last = self.args, self.phases[-1]
        spec, n = self.mod.PHASES[last], a.final_samples
        net, collator = self.net_for(last), self.collator_for(last)
        judged = score_objective if spec.get("objective") else score_replies
        res = {"minutes": (time.time() - self.start) / 60}
        for split, tasks in (("test", eval_tasks(spec)), ("compose", [t for t in eval_tasks(spec) if t in COMPOSE])):
            res[split] = judged(net, collator, tasks, split, n, self.device, a.seed, self.ctx)
            for t, r in res[split].items():
                kinds = "  ".join(f"{k} {v:.3f}" for k, v in r["kinds"].items())
                also = f" (exact match {r['exact']:.3f})" if judge_name(t) != "exact match" else ""
                print(f"{split:8s} {t:14s} {judge_name(t)} {r['score']:.3f}{also}   ({kinds})")
        res["test_loss"] = {t: mean_loss(self.model, collator, [t], "test", n, self.device, a.seed, self.ctx)["lm"]
                            for t in self.loss_tasks()}
        print("test loss  " + "  ".join(f"{t} {v:.4f}" for t, v in res["test_loss"].items()))
        res["text_loss_after"] = {r["phase"]: r["text_test_loss"] for r in map(json.loads, open(self.log_path))
                                  if "text_test_loss" in r}
        print("text test loss after each phase  " + "  ".join(f"{p} {v:.4f}" for p, v in res["text_loss_after"].items()))
        print(f"total time {res['minutes']:.1f} min")
        with open(os.path.join(a.out_dir, "results.json"), "w") as f:
            json.dump(res, f, indent=1)
        self.log.write(kind="final", gstep=10**9, **res)
        return res


def main(argv=None):
    args, mod, overrides = parse_args(argv)
    random.seed(args.seed)
    return Trainer(args, mod, overrides).run()


if __name__ == "__main__":
    main()
