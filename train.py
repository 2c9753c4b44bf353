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
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import IGNORE, Collator, Folder, Mixture, Tokenizer, get_sample, make_loader

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

@torch.no_grad()
def answer(model, collator, prompts, max_new, device, temperature=0.0, top_k=None, ctx=nullcontext()):
    """The model's replies (text up to <eos>) to prompt samples (see Collator.prompt). Prompts of
    equal length are generated as one batch, so no padding is needed."""
    model.eval()
    encoded = [collator.encode(p)[0] for p in prompts]
    by_len, replies, eos = {}, [None] * len(prompts), collator.tok.eos
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
                replies[i] = collator.tok.decode(g[:g.index(eos)] if eos in g else g).strip()
    return replies


def evaluate(model, collator, tasks, split, n, device, seed=0, ctx=nullcontext()):
    """Exact-match accuracy of greedy generation on n samples per task: {task: {"acc", "kinds"}}."""
    out = {}
    for task in tasks:
        if len(get_sample(task, split, 0, seed)["conversations"]) < 2:
            continue  # nothing to answer (text-only): judged by its loss alone
        samples = [get_sample(task, split, i, seed) for i in range(n)]
        prompts, truths = zip(*map(Collator.prompt, samples))
        max_new = max(len(collator.tok.encode(t)) for t in truths) + 1
        replies = answer(model, collator, prompts, max_new, device, ctx=ctx)
        per_kind = {}
        for s, r, t in zip(samples, replies, truths):
            per_kind.setdefault(s["kind"], []).append(r == t)
        right = sum(r == t for r, t in zip(replies, truths))
        out[task] = {"acc": right / n, "kinds": {k: sum(v) / len(v) for k, v in sorted(per_kind.items())}}
    return out


@torch.no_grad()
def val_loss(model, collator, tasks, n, device, seed=0, ctx=nullcontext()):
    model.eval()
    ds = Mixture(tasks, "val", n, seed)
    total, count = 0.0, 0
    for j in range(0, n, 64):
        b = collator([ds[i] for i in range(j, min(j + 64, n))])
        tgt = b["targets"].to(device)
        with ctx:
            _, loss, _ = model(b["tokens"].to(device), tgt, {k: v.to(device) for k, v in b["media"].items()})
        k = int((tgt != IGNORE).sum())
        total, count = total + float(loss) * k, count + k
    return total / max(count, 1)


# ----------------------------------------------------------------------------- log and plots

def plot(log_path, png_path):
    """Redraw the plots from the log alone: loss, accuracy, and any auxiliary terms."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = [json.loads(line) for line in open(log_path)]
    train = [r for r in recs if r["kind"] == "train"]
    evals = [r for r in recs if r["kind"] == "eval"]
    aux = sorted({k for r in train for k in r.get("aux", {})})
    fig, axes = plt.subplots(1, 3 if aux else 2, figsize=(15 if aux else 11, 4))
    ax = axes[0]
    ax.plot([r["gstep"] for r in train], [r["loss"] for r in train], lw=0.8, label="train")
    ax.plot([r["gstep"] for r in evals], [r["val_loss"] for r in evals], "o-", ms=3, label="val")
    ax.set(yscale="log", xlabel="step (all phases)", ylabel="loss", title="loss")
    for r in recs:
        if r["kind"] == "phase":
            for a in axes:
                a.axvline(r["gstep"], color="grey", lw=0.5, ls="--")
            ax.text(r["gstep"], ax.get_ylim()[1], r["phase"], fontsize=7, va="top")
    ax.legend()
    series = {}
    for r in evals:
        for task, res in r["acc"].items():
            for kind, acc in res["kinds"].items():
                series.setdefault(f"{task}/{kind}", []).append((r["gstep"], acc))
    for name, pts in series.items():
        axes[1].plot(*zip(*pts), "o-", ms=3, label=name)
    axes[1].set(xlabel="step (all phases)", ylabel="exact match", title="held-out accuracy (val)", ylim=(0, 1.02))
    if series:
        axes[1].legend(fontsize=7)
    for k in aux:
        pts = [(r["gstep"], r["aux"][k]) for r in train if k in r.get("aux", {})]
        axes[2].plot(*zip(*pts), lw=0.8, label=k)
    if aux:
        axes[2].set(xlabel="step (all phases)", title="auxiliary terms")
        axes[2].legend(fontsize=7)
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
        # the tokenizer fills the vocabulary size and every special-token id field of the Config
        fill = {"vocab_size": len(self.tok)}
        fill.update({f.name: self.tok.stoi[f"<{f.name[:-3]}>"] for f in dataclasses.fields(mod.Config)
                     if f.name.endswith("_id") and f"<{f.name[:-3]}>" in self.tok.stoi})
        self.cfg = mod.Config(**{**fill, **overrides})
        torch.manual_seed(args.seed)
        self.model = mod.Model(self.cfg).to(self.device)
        self.collator = Collator(self.tok, self.model.media_tokens, max_len=self.cfg.max_seq
                                 if hasattr(self.cfg, "max_seq") else None)
        os.makedirs(args.out_dir, exist_ok=True)
        self.phases = [args.phase] if args.phase else list(mod.PHASES)
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

    def ckpt_path(self, phase):
        return os.path.join(self.args.out_dir, f"{phase}.pt")

    def run(self):
        a = self.args
        resume_from = None
        if a.init_from:
            load_weights(self.model, read_checkpoint(a.init_from)["model"], a.init_from)
        if a.resume:  # the last phase with a checkpoint decides where we are
            done = [p for p in self.phases if os.path.exists(self.ckpt_path(p))]
            if not done:
                raise SystemExit(f"--resume: no checkpoint of phases {self.phases} in {a.out_dir}")
            resume_from = read_checkpoint(self.ckpt_path(done[-1]))
            if resume_from["config"] != dataclasses.asdict(self.cfg):
                raise SystemExit(f"--resume: {self.ckpt_path(done[-1])} was trained with another Config; "
                                 f"pass the same --field overrides as the original run")
            load_weights(self.model, resume_from["model"], self.ckpt_path(done[-1]))
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
        model = torch.compile(self.model) if a.compile else self.model
        if self.ddp:
            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
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
        loader = iter(make_loader(ds, self.collator, B, self.rank, self.world, start=step * per_step,
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
            model.train()
            loss_sum, aux_sum = torch.zeros((), device=self.device), {}
            for k, b in enumerate(batches):
                last = k == len(batches) - 1
                media = {m: v.to(self.device, non_blocking=True) for m, v in b["media"].items()}
                sync = nullcontext() if (last or not self.ddp) else model.no_sync()  # all-reduce once
                with sync, self.ctx:
                    _, loss, aux = model(b["tokens"].to(self.device), b["targets"].to(self.device), media)
                    w = counts[k] / total * self.world  # DDP averages over ranks: undo that
                    (loss * w).backward()
                loss_sum += loss.detach() * counts[k] / total
                for name, v in aux.items():
                    aux_sum[name] = aux_sum.get(name, 0.0) + float(v) / len(batches)
            if a.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if self.ddp:
                dist.all_reduce(loss_sum)
            step, gstep = step + 1, gstep + 1
            ntok = sum(b["tokens"].numel() for b in batches) * self.world
            dt = time.time() - t0
            if self.master:
                self.log.write(kind="train", phase=phase, step=step, gstep=gstep, loss=float(loss_sum),
                               lr=lr, tok_per_s=ntok / dt, aux=aux_sum, time=time.time() - self.start)
                bar.set_postfix(loss=f"{float(loss_sum):.4f}", lr=f"{lr:.1e}", tok_s=f"{ntok / dt:,.0f}")
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
        if self.master:
            spec = self.mod.PHASES[phase]
            vl = val_loss(self.model, self.collator, spec["tasks"], self.args.eval_samples, self.device,
                          self.args.seed, self.ctx)
            acc = evaluate(self.model, self.collator, eval_tasks(spec), "val", self.args.eval_samples, self.device,
                           self.args.seed, self.ctx)
            self.log.write(kind="eval", phase=phase, step=step, gstep=gstep, val_loss=vl, acc=acc)
            if last or time.time() - self.plotted > 60:  # a plot takes ~0.5 s on a CPU: at most once a minute
                plot(self.log_path, os.path.join(self.args.out_dir, "plots.png"))
                self.plotted = time.time()
            summary = " ".join(f"{t}={r['acc']:.3f}" for t, r in acc.items())
            tqdm.write(f"[{phase} {step}] val loss {vl:.4f}  accuracy {summary}")
        if self.ddp:
            dist.barrier()

    def save(self, phase, step, gstep, opt, done):
        if self.master:
            rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            save_atomic({"model": clean_state_dict(self.model.state_dict()), "optimizer": opt.state_dict(),
                         "model_name": self.args.model, "phase": phase, "step": step, "gstep": gstep,
                         "done": done, "config": dataclasses.asdict(self.cfg), "rng": rng,
                         "tokenizer": {"words": self.tok.words, "punctuation": self.tok.punctuation,
                                       "specials": self.tok.specials},
                         "args": {k: v for k, v in vars(self.args).items()}}, self.ckpt_path(phase))
        if self.ddp:
            dist.barrier()

    def final_report(self):
        """Accuracy of the finished model on the test split and, where a task has one, the
        compose split (held-out attribute combinations)."""
        tasks = eval_tasks(self.mod.PHASES[self.phases[-1]])
        n, res = self.args.final_samples, {"minutes": (time.time() - self.start) / 60}
        for split in ("test", "compose"):
            has = [t for t in tasks if t != "speech" and t != "text"] if split == "compose" else tasks
            res[split] = evaluate(self.model, self.collator, has, split, n, self.device, self.args.seed, self.ctx)
            for t, r in res[split].items():
                kinds = "  ".join(f"{k} {v:.3f}" for k, v in r["kinds"].items())
                print(f"{split:8s} {t:12s} exact match {r['acc']:.3f}   ({kinds})")
        print(f"total time {res['minutes']:.1f} min")
        with open(os.path.join(self.args.out_dir, "results.json"), "w") as f:
            json.dump(res, f, indent=1)
        self.log.write(kind="final", gstep=10**9, **res)
        return res


def main(argv=None):
    args, mod, overrides = parse_args(argv)
    random.seed(args.seed)
    return Trainer(args, mod, overrides).run()


if __name__ == "__main__":
    main()
