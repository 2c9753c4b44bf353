"""Look at the toy world, or write it to disk.

    python -m data [--out contact_sheet.png] [--seed 0]     a contact sheet: a few samples per task
    python -m data write --task vqa --split train --n 100 --out DIR     a dataset folder (data/folder.py)
    python -m data speed [--batch 64]      time a batch of mixed samples of every task, on one core
    python -m data example --out DIR [--n 64]    LLaVA's JSON format with plain-English captions (data/example.py)
    python -m data analyser [--n 1000] [--seed 0]     how often world.analyse_image reads a scene exactly,
                                           on clean renders and on each of world.degrade's kinds
"""
import argparse
import textwrap

import numpy as np
from matplotlib.figure import Figure

from . import world
from .example import write_example
from .folder import write_folder
from .show import show_media
from .tasks import SPLITS, TASKS, get_sample

COLUMNS = 3
ROLE_COLOURS = {"human": "#333333", "gpt": "#1f5fbf"}


def wrapped(sample, width=46):
    """The conversation as (role, line) pairs, wrapped to `width` characters."""
    return [(t["from"], text) for t in sample["conversations"]
            for text in textwrap.wrap(f"{t['from']}: {t['value']}", width, subsequent_indent="   ")]


def show_text(ax, sample):
    """The conversation under the media, one wrapped line after another, answers in blue."""
    ax.set_axis_off()
    for k, (role, text) in enumerate(wrapped(sample)):
        ax.annotate(text, (0, 1), xycoords="axes fraction", xytext=(0, -11 * k), textcoords="offset points",
                    va="top", fontsize=8, family="monospace", color=ROLE_COLOURS[role],
                    weight="bold" if role == "gpt" else "normal")


def contact_sheet(out, seed=0):
    """One row per task, COLUMNS train samples each: the media and, under it, the conversation."""
    rows = {task: [get_sample(task, "train", col, seed) for col in range(COLUMNS)] for task in TASKS}
    # room for 7 lines of text under the media, more where a row's longest conversation needs it
    ratios = [r for row in rows.values() for r in (1.5, max(1.25, 0.17 * max(len(wrapped(s)) for s in row)))]
    fig = Figure(figsize=(4.3 * COLUMNS, 1.055 * sum(ratios)))
    grid = fig.add_gridspec(2 * len(TASKS), COLUMNS, height_ratios=ratios,
                            left=0.035, right=0.99, top=0.985, bottom=0.005, wspace=0.12, hspace=0.25)
    for row, task in enumerate(TASKS):
        for col, s in enumerate(rows[task]):
            ax = fig.add_subplot(grid[2 * row, col])
            show_media(ax, s)
            ax.set_title(f"{s['id']}  ({s['kind']})", fontsize=8, color="#555555", pad=3)
            show_text(fig.add_subplot(grid[2 * row + 1, col]), s)
        box = grid[2 * row, 0].get_position(fig)
        fig.text(0.01, (box.y0 + box.y1) / 2, task, rotation=90, ha="left", va="center", fontsize=11,
                 weight="bold")
    fig.savefig(out, dpi=110)
    return out


def speed(batch, seed=0, repeats=5):
    """Median seconds to generate and collate `batch` samples mixed over every task, one thread."""
    import time

    import torch

    from .collate import Collator, Mixture
    from .tokenizer import Tokenizer
    torch.set_num_threads(1)
    collate = Collator(Tokenizer(), {"image": 9, "audio": 16, "speech": 16, "video": 4})
    ds = Mixture(list(TASKS), "train", 10**9, seed)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        collate([ds[r * batch + i] for i in range(batch)])
        times.append(time.perf_counter() - t0)
    return sorted(times)[repeats // 2]


def analyser(n, seed=0):
    """One line per kind of image (clean renders, then each world.degrade kind): the fraction of n
    random scenes that world.analyse_image reads back exactly, and the mean PSNR against the render."""
    lines = []
    for kind in ("clean",) + world.DEGRADATIONS:
        scenes, spoil = np.random.default_rng(seed), np.random.default_rng(seed + 1)  # same scenes per kind
        hits, db = 0, []
        for _ in range(n):
            scene = world.sample_scene(scenes)
            img = world.render_scene(scene, scenes)
            seen = img if kind == "clean" else world.degrade(img, spoil, kind)
            hits += world.analyse_image(seen) == scene
            db.append(world.psnr(seen, img))
        lines.append(f"{kind:>6}: {hits}/{n} = {hits / n:.3f} scenes read exactly, mean PSNR {np.mean(db):.1f} dB")
    return lines


def main():
    p = argparse.ArgumentParser(prog="python -m data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="contact_sheet.png", help="where to write the contact sheet")
    p.add_argument("--seed", type=int, default=0)
    sub = p.add_subparsers(dest="command")
    w = sub.add_parser("write", help="write a toy task to a dataset folder")
    w.add_argument("--task", required=True, choices=list(TASKS))
    w.add_argument("--split", default="train", choices=SPLITS)
    w.add_argument("--n", type=int, default=100)
    w.add_argument("--out", dest="folder", required=True, help="the dataset folder to write")
    w.add_argument("--seed", type=int, default=0)
    ex = sub.add_parser("example", help="a LLaVA-style JSON file of English captions and its images")
    ex.add_argument("--out", dest="folder", required=True, help="the folder to write")
    ex.add_argument("--n", type=int, default=64)
    ex.add_argument("--seed", type=int, default=0)
    sp = sub.add_parser("speed", help="time generating and collating a batch of mixed samples")
    sp.add_argument("--batch", type=int, default=64)
    an = sub.add_parser("analyser", help="how often the image analyser reads a scene exactly, clean and degraded")
    an.add_argument("--n", type=int, default=1000)
    an.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.command == "speed":
        t = speed(args.batch)
        print(f"{args.batch} samples mixed over {len(TASKS)} tasks, generated and collated on one core: "
              f"{1e3 * t:.0f} ms ({args.batch / t:,.0f} samples/s)")
    elif args.command == "analyser":
        print("\n".join(analyser(args.n, args.seed)))
    elif args.command == "example":
        print(f"wrote {write_example(args.folder, args.n, args.seed)}")
    elif args.command == "write":
        print(f"wrote {write_folder(args.folder, args.task, args.split, args.n, args.seed)}")
    else:
        print(f"wrote {contact_sheet(args.out, args.seed)}")


if __name__ == "__main__":
    main()
