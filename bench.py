"""Benchmark nano models: parameters, training throughput, forward latency, memory, FLOPs and MFU.

    python bench.py --model llava --size toy-S --threads 2        # the docs/DESIGN.md section 4 size
    python bench.py --model llava,flamingo --json bench.json       # one table row per model
    python bench.py --model llava --size default --time-to-accuracy  # + the default recipe's minutes to 95%
    python bench.py --model llava --n_layer 8                      # any Config field is a flag too

One training step is forward with targets, backward and an AdamW step, with every parameter trained.
FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on one real step (matmuls, convolutions,
attention), and MFU divides the achieved FLOP/s by the matmul peak *measured in the same run*, with
the same threads and dtype (fp32 on CPU, bf16 on CUDA): a stated constant for one chip would not
transfer to another.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

import train
from data.errors import UserError
from data import IGNORE, Mixture

# Config overrides and the synthetic batch of each benchmark size, per model. A batch is `batch` rows
# of one item per modality in `media` (item shape), their placeholder positions first, then `text` tokens.
SIZES = {
    "toy-S": {  # docs/DESIGN.md section 4: equal sizes, so the five files compare fairly
        "llava": dict(config=dict(n_embd=256, n_layer=6, n_head=8, mlp_hidden=688, vocab_size=1024,
                                  image_size=64, patch=8, pixel_shuffle=1, vit_embd=256, vit_layers=4, vit_heads=8,
                                  vit_mlp=1024),
                      batch=16, text=64, media={"image": (3, 64, 64)}),
        "cogvlm": dict(config=dict(n_embd=256, n_layer=6, n_head=8, mlp_hidden=688, vocab_size=1024,
                                   image_size=64, patch=8, merge=1, vit_embd=256, vit_layers=4, vit_heads=8,
                                   vit_mlp=1024),
                       batch=16, text=64, media={"image": (3, 64, 64)}),
        "flamingo": dict(config=dict(n_embd=256, n_layer=6, n_head=8, mlp_hidden=688, vocab_size=1024,
                                     image_size=64, patch=8, vit_embd=256, vit_layers=4, vit_heads=8, vit_mlp=1024,
                                     xattn_heads=8),
                         batch=16, text=64, media={"image": (3, 64, 64)}),
    },
    "tiny": {  # for the tests: seconds, not minutes
        "llava": dict(config=dict(n_embd=64, n_layer=2, n_head=4, mlp_hidden=176, image_size=24, patch=4,
                                  vit_embd=64, vit_layers=2, vit_heads=4, vit_mlp=256),
                      batch=4, text=16, media={"image": (3, 24, 24)}),
        "cogvlm": dict(config=dict(n_embd=64, n_layer=2, n_head=4, mlp_hidden=176, image_size=24, patch=4,
                                   vit_embd=64, vit_layers=2, vit_heads=4, vit_mlp=256),
                       batch=4, text=16, media={"image": (3, 24, 24)}),
        "flamingo": dict(config=dict(n_embd=64, n_layer=2, n_head=4, mlp_hidden=176, image_size=24, patch=4,
                                     vit_embd=64, vit_layers=2, vit_heads=4, vit_mlp=256, n_latents=4,
                                     resampler_layers=1),
                         batch=4, text=16, media={"image": (3, 24, 24)}),
    },
}
# FlopCounterMode's table has the GPU attention kernels but not the CPU one: add it, same formulas
CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v),
}
# time-to-accuracy: each model's bar, a held-out (val) score every task of its last phase must reach,
# and the minutes its default recipe may take on 2 CPU cores (the models' issues set them)
BARS = {"llava": (0.95, 10), "flamingo": (0.95, 10), "cogvlm": (0.95, 10), "chameleon": (0.95, 10),
        "unimoe": (0.95, 10)}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", required=True, help=f"comma-separated, from {', '.join(train.MODELS)}")
    a("--size", default="toy-S", help=f"{', '.join(SIZES)}, or default (Config defaults, a real recipe batch)")
    a("--steps", type=int, default=20, help="timed training steps (and forward passes)")
    a("--warmup", type=int, default=5, help="untimed steps first (compilation, allocator, caches)")
    a("--batch_size", type=int, default=None, help="rows per batch (default: the size's, or the recipe's)")
    a("--device", default="auto")
    a("--dtype", default="auto", help="auto (bf16 autocast on CUDA, fp32 elsewhere), bf16 or fp32")
    a("--compile", action="store_true")
    a("--threads", type=int, default=2, help="CPU threads, for the model and the matmul peak alike")
    a("--json", default=None, help="also write every number here")
    a("--time-to-accuracy", dest="tta", action="store_true", help="train the default recipe, time it to the bar")
    a("--out_dir", default=os.path.join("out", "bench_tta"), help="time-to-accuracy runs go to out_dir/<model>")
    return p


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_time(fn, device, steps, warmup):
    """Median wall time of fn() over `steps` calls after `warmup` untimed ones."""
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(device, dtype, repeats=3):
    """The best FLOP/s of a square matmul over a few sizes, best of `repeats`: (FLOP/s, n)."""
    sizes, work = ((4096, 8192), 2**40) if device.type == "cuda" else ((1024, 2048, 3072), 2**31)
    best = (0.0, 0)
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        c, k = torch.empty_like(a), max(1, work // n**3)  # k matmuls per timing: no sub-millisecond timings

        def run():
            for _ in range(k):
                torch.mm(a, b, out=c)
        run()  # warm-up
        t = min(median_time(run, device, 1, 0) for _ in range(repeats))
        best = max(best, (2 * n**3 * k / t, n))
    return best


def synthetic_batch(trainer, rows, text, media):
    """`rows` x (placeholders of one item per modality, then text+1 random non-special ids);
    targets are the next ids, with no loss where the next one is a placeholder (as the collator does)."""
    tok, specials = trainer.tok, len(trainer.tok.specials)
    marks = [tok.stoi[f"<{m}>"] for m in media for _ in range(trainer.model.media_tokens[m])]
    ids = torch.randint(specials, trainer.cfg.vocab_size, (rows, len(marks) + text + 1))
    ids[:, :len(marks)] = torch.tensor(marks, dtype=torch.long)
    nxt = ids[:, 1:]
    return {"tokens": ids[:, :-1], "targets": nxt.masked_fill(nxt < specials, IGNORE),
            "media": {m: torch.rand(rows, *shape) for m, shape in media.items()}}


def build(name, args, extra):
    """(trainer, batch) of one model: train.Trainer builds it (device, dtype, tokenizer-filled Config)."""
    spec = {} if args.size == "default" else SIZES[args.size][name]
    targs, mod, overrides = train.parse_args(["--model", name, "--device", args.device, "--dtype", args.dtype,
                                              "--threads", str(args.threads), "--out_dir",
                                              os.path.join(args.out_dir, name)] + extra)
    trainer = train.Trainer(targs, mod, {**spec.get("config", {}), **overrides})
    last = list(mod.PHASES)[-1]
    if spec:
        batch = synthetic_batch(trainer, args.batch_size or spec["batch"], spec["text"], spec["media"])
    else:  # a real batch of the recipe's last phase
        rows = args.batch_size or trainer.specs[last]["batch_size"]
        ds = Mixture(trainer.specs[last]["tasks"], "train", rows, targs.seed)
        batch = trainer.collator([ds[i] for i in range(rows)])
    trainer.model.set_phase(last)  # its forward path; then train every parameter
    trainer.model.requires_grad_(True)
    d = trainer.device
    return trainer, {"tokens": batch["tokens"].to(d), "targets": batch["targets"].to(d),
                     "media": {m: v.to(d) for m, v in batch["media"].items()}}


def forward_backward(model, batch, ctx):
    with ctx:
        _, loss, _ = model(batch["tokens"], batch["targets"], batch["media"])
    loss.backward()


def count_flops(model, batch, ctx):
    """FLOPs of one forward + backward as FlopCounterMode counts them (matmuls, convolutions, attention).
    Run eagerly, so that the counter sees every aten op even when the timed model is compiled."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        forward_backward(model, batch, ctx)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench_model(trainer, batch, args, rss0):
    model, device, ctx = trainer.model, trainer.device, trainer.ctx
    tokens, media = batch["tokens"], batch["media"]
    groups = {n: sum(p.numel() for p in m.parameters()) for n, m in model.named_children()}
    groups = {n: c for n, c in groups.items() if c}
    lr = trainer.mod.PHASES[list(trainer.mod.PHASES)[-1]]["lr"]
    opt = train.make_optimizer(model, lr, 0.1, 0.95, device.type)
    fast = torch.compile(model) if args.compile else model

    model.train()
    flops = count_flops(model, batch, ctx)

    def step():
        forward_backward(fast, batch, ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = median_time(step, device, args.steps, args.warmup)
    if device.type == "cuda":
        memory = {"bytes": torch.cuda.max_memory_allocated(device), "kind": "CUDA max_memory_allocated"}
    else:  # ru_maxrss is in KiB on Linux, bytes on macOS; a high-water mark, so later models may under-report
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
        memory = {"bytes": grown * (1 if sys.platform == "darwin" else 1024), "kind": "CPU peak RSS growth (ru_maxrss)"}

    model.eval()
    def forward():
        with torch.no_grad(), ctx:
            fast(tokens, None, media)
    forward_s = median_time(forward, device, args.steps, args.warmup)
    n_tok, rows = tokens.numel(), tokens.size(0)
    return {"params": {"total": sum(p.numel() for p in model.parameters()), "groups": groups},
            "config": vars(trainer.cfg), "batch": {"rows": tokens.size(0), "seq": tokens.size(1), "tokens": n_tok},
            "step_s": step_s, "tokens_per_s": n_tok / step_s, "samples_per_s": rows / step_s, "forward_s": forward_s,
            "memory": memory,
            "flops_per_step": flops, "flops_per_token": flops / n_tok, "achieved_flops": flops / step_s}


def time_to_accuracy(name, args, mod):
    """Train the default recipe; minutes (the train log's clock) until the last phase's val score
    first reached the model's bar on every task, and the final test results."""
    out = os.path.join(args.out_dir, name)
    flags = ["--model", name, "--out_dir", out, "--overwrite", "--device", args.device, "--dtype", args.dtype,
             "--threads", str(args.threads)] + ["--compile"] * args.compile
    results = train.main(flags)
    (bar, minutes), last, clock, reached = BARS[name], list(mod.PHASES)[-1], 0.0, None
    with open(os.path.join(out, "log.jsonl")) as f:
        for r in map(json.loads, f):
            if r["kind"] == "train":
                clock = r["time"]
            elif r["kind"] == "eval" and r["phase"] == last and r["scores"] and reached is None \
                    and all(v["score"] >= bar for v in r["scores"].values()):
                reached = clock / 60
    return {"bar": bar, "bar_minutes": minutes, "minutes_to_bar": "not reached" if reached is None else reached,
            "minutes_total": results["minutes"], "test": {t: v["score"] for t, v in results["test"].items()},
            "out_dir": out}


def machine(device, dtype, args, peak):
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    if device.type == "cpu" and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    return {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "device_name": name, "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."),
            "compile": args.compile, "peak_flops": peak[0], "peak_matmul_n": peak[1]}


def fmt(x, unit=""):
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{prefix}{unit}"
    return f"{x:.3g}{unit}"


def table(report):
    tta = any("time_to_accuracy" in r for r in report["models"].values())
    head = ["model", "params", "tokens/s", "samples/s", "step ms", "fwd ms", "peak mem MiB", "FLOP/step",
            "FLOP/token", "MFU"]
    head += ["bar", "minutes to bar", "test score"] * tta
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    notes = []
    for name, r in report["models"].items():
        if "skipped" in r:
            notes.append(f"skipped {name}: {r['skipped']}")
            continue
        groups = ", ".join(f"{g} {fmt(c)}" for g, c in r["params"]["groups"].items())
        row = [name, f"{fmt(r['params']['total'])} ({groups})", f"{r['tokens_per_s']:,.0f}",
               f"{r['samples_per_s']:,.1f}", f"{1e3 * r['step_s']:.1f}",
               f"{1e3 * r['forward_s']:.1f}", f"{r['memory']['bytes'] / 2**20:.0f}", fmt(r["flops_per_step"]),
               fmt(r["flops_per_token"]), f"{100 * r['mfu']:.1f}%"]
        if tta:
            t = r.get("time_to_accuracy", {})
            m = t.get("minutes_to_bar", "-")
            row += [f"{t['bar']:.0%} in {t['bar_minutes']} min" if t else "-", m if isinstance(m, str) else f"{m:.1f}",
                    ", ".join(f"{k} {v:.3f}" for k, v in t.get("test", {}).items())]
        lines.append("| " + " | ".join(row) + " |")
    m = report.get("machine")
    if m:
        mem = next((r["memory"]["kind"] for r in report["models"].values() if "memory" in r), "")
        notes.append(f"size {report['size']}, {m['device_name']} ({m['device']}), {m['threads']} threads, "
                     f"{m['dtype']}{', compiled' if m['compile'] else ''}, torch {m['torch']}; matmul peak "
                     f"{fmt(m['peak_flops'], 'FLOP/s')} (n={m['peak_matmul_n']}, measured in this run); memory: {mem}")
    return "\n".join(lines + [""] + notes)


def main(argv=None):
    try:
        return bench(*build_parser().parse_known_args(argv))
    except UserError as e:  # something the user gave is wrong: one line; a bug keeps its traceback
        print(f"bench.py: error: {e}", file=sys.stderr)
        raise SystemExit(2)


def bench(args, extra):
    if args.size != "default" and args.size not in SIZES:
        raise UserError(f"unknown --size {args.size!r}; choose one of {', '.join(SIZES)}, default")
    torch.set_num_threads(args.threads)
    report, kind = {"size": args.size, "models": {}}, None  # kind: (device, dtype) the models ran in
    for name in args.model.split(","):
        if name not in train.MODELS:
            raise UserError(f"unknown model {name!r}; choose from {', '.join(train.MODELS)}")
        try:
            train.model_module(name)
            skip = None if args.size == "default" or name in SIZES[args.size] else \
                f"no {args.size!r} entry for it in bench.SIZES"
        except UserError as e:  # a model not written yet
            skip = str(e)
        if skip:
            report["models"][name] = {"skipped": skip}
            print(f"skipping {name}: {skip}")
            continue
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        trainer, batch = build(name, args, extra)
        report["models"][name] = bench_model(trainer, batch, args, rss0)
        if args.tta:
            report["models"][name]["time_to_accuracy"] = time_to_accuracy(name, args, trainer.mod)
        kind = trainer.device, getattr(trainer.ctx, "fast_dtype", torch.float32)
        del trainer, batch  # free this model before the next one is measured
    if kind:  # the peak last, so that its matrices count in no model's memory
        peak = matmul_peak(*kind)
        report["machine"] = machine(*kind, args, peak)
        for r in report["models"].values():
            if "achieved_flops" in r:
                r["mfu"] = r["achieved_flops"] / peak[0]
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
