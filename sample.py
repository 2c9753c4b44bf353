"""Ask a checkpoint questions: fresh toy samples of a task, or your own image or sound with a prompt.

    python sample.py out/llava/instruct.pt                         # 8 test questions of its phase's task
    python sample.py out/llava/instruct.pt --task vqa --split compose --n 16
    python sample.py out/llava/align.pt --temperature 0.8 --top_k 5 --seed 1
    python sample.py out/llava/instruct.pt --image my.png --prompt "what colour is the circle?"
    python sample.py out/llava/instruct.pt --task vqa --n 1000 --by_shapes   # accuracy by kind x shapes
    python sample.py out/flamingo/mixture.pt --task vqa --shots 2    # two solved examples before each question

Prints each prompt, the model's answer and the truth (the first 16 of them, then the task's judged
score, data/judges.py), and draws those under their media into --out (green: judged right, red: wrong,
grey: no truth), with the media the model generated (a drawn image) beside the prompt's.
"""
import argparse
import os
import sys
import textwrap
import wave
from collections import Counter
from itertools import islice
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

import train
from data import SPLITS, TASKS, Collator, get_sample, judge
from data.errors import UserError
from data.judges import judge_name
from data.show import show_media
from data.folder import MARKER, read_frames, read_wav
from data.world import IMAGE_SIZE, POSITIONS, analyse_image

USER_MEDIA = ("image", "audio", "speech")  # the modalities a single file on the command line can be


class Row(NamedTuple):
    prompt: dict   # the prompt sample (Collator.prompt)
    truth: str     # the answer, or None for your own file
    reply: str     # the model's text, a generated media item as its marker
    made: dict     # what the model generated, by modality: images (N, 3, H, W) in [0, 1]
    score: float   # the task's judge (data/judges.py), or None without a truth


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("checkpoint", help="a checkpoint written by train.py, e.g. out/llava/instruct.pt")
    a("--task", default=None, help="a toy task (default: the checkpoint phase's first task with a prompt)")
    a("--split", default="test", choices=SPLITS)
    a("--n", type=int, default=8, help="how many toy samples")
    a("--seed", type=int, default=0, help="picks the toy samples (the world's seed) and seeds sampling")
    a("--shots", type=int, default=0, help="few-shot: put this many solved training samples of the task "
      "(media, question, answer) before each question, in one interleaved prompt (Flamingo sec 3)")
    for m in USER_MEDIA:
        a(f"--{m}", default=None, help=f"your own {m} file ({'an image' if m == 'image' else 'a PCM wav'})")
    a("--prompt", default=None, help="the question about your file; <image>/<audio>/<speech> is prepended if absent")
    a("--temperature", type=float, default=0.0, help="0: greedy")
    a("--top_k", type=int, default=None)
    a("--max_new_tokens", type=int, default=None, help="default: the longest truth + 1, or 32 for your own file")
    a("--device", default="cpu")
    a("--out", default="samples.png", help="where the picture goes (the first 16 samples)")
    a("--by_shapes", action="store_true", help="also print exact match per question kind and number of "
      "shapes in the image (does the model find the object a question names among several?), and each "
      "kind's commonest wrong answers")
    return p


def toy_prompts(args, phase, phases):
    """[(prompt sample, truth)] of the first n samples of the task that end in an answer to a prompt
    (the task: --task, else the phase's first judged task that has such samples)."""
    for task in [args.task] if args.task else train.eval_tasks(phases[phase]):
        if task not in TASKS:
            raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        try:  # a text sample may be a bare sentence: look a little further for n with a prompt
            found = list(islice(filter(train.has_answer, (get_sample(task, args.split, i, args.seed)
                                                          for i in range(20 * args.n))), args.n))
        except UserError as e:  # e.g. a task with no compose split
            raise UserError(f"cannot ask {task!r} questions: {e}")
        if found:
            return [few_shot(Collator.prompt(s), task, i, args.shots, args.seed) for i, s in enumerate(found)]
    raise UserError(f"phase {phase!r} trains on {list(phases[phase]['tasks'])}: nothing to ask; pass --task")


def few_shot(prompt, task, i, shots, seed):
    """(prompt, truth) with `shots` solved training samples of the task before the question: their
    turns and media first, in order, then the question's. Each question gets its own examples."""
    if not shots:
        return prompt
    found = islice(filter(train.has_answer, (get_sample(task, "train", 10 ** 6 + 50 * i + j, seed) for j in range(50))),
                   shots)
    support = list(found)
    sample, truth = prompt
    return {**sample, "conversations": [t for s in support for t in s["conversations"]] + sample["conversations"],
            "media": [m for s in support for m in s["media"]] + sample["media"]}, truth


def user_prompt(args):
    """[(prompt sample, None)] of the files on the command line and the prompt."""
    files = {m: getattr(args, m) for m in USER_MEDIA if getattr(args, m)}
    if not args.prompt:
        raise UserError(f"--prompt is needed with --{' / --'.join(files)}: what should the model answer?")
    text = "".join(f"<{m}> " for m in files if f"<{m}>" not in args.prompt) + args.prompt
    order = MARKER.findall(text)
    if sorted(order) != sorted(files):
        raise UserError(f"the prompt's markers {order} do not match the files given ({', '.join(files) or 'none'})")
    media = []
    for m in order:
        if not os.path.isfile(files[m]):
            raise UserError(f"--{m} {files[m]!r}: no such file")
        try:
            data = read_frames(files[m], 1, IMAGE_SIZE)[0] if m == "image" else read_wav(files[m], m)
        except (OSError, ValueError, EOFError, wave.Error) as e:
            raise UserError(f"cannot read --{m} {files[m]!r} ({e}); it must be "
                             f"{'an image Pillow reads' if m == 'image' else 'a PCM wav'}")
        media.append({"type": m, "data": data})
    sample = {"id": "user", "task": "user", "kind": "user", "media": media,
              "conversations": [{"from": "human", "value": text}]}
    return [(sample, None)]


def question(prompt):
    return " ".join(t["value"] for t in prompt["conversations"])


def generated(prompt, made):
    """The prompt sample with the model's generated images appended, as uint8 arrays of the world's
    image size (so that they line up with the prompt's in one strip)."""
    items = [{"type": m, "data": np.asarray(Image.fromarray((x.permute(1, 2, 0).clamp(0, 1) * 255).round().byte()
                                                             .numpy()).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST))}
             for m, xs in made.items() for x in xs.cpu()]
    return {**prompt, "media": prompt["media"] + items}


def draw(rows, path, columns=4, width=36):
    """Each sample's media and what the model drew, and under them the prompt (black), the answer
    and the truth (in colour)."""
    cols, texts = min(columns, len(rows)), []
    for prompt, truth, reply, made, score in rows:
        colour = "grey" if truth is None else "green" if score == 1 else "red"
        texts.append([(line, "black") for line in textwrap.wrap(question(prompt), width)]
                     + [(line, colour) for line in textwrap.wrap(f"model: {reply or '(nothing)'}", width)
                        + textwrap.wrap(f"truth: {'?' if truth is None else truth}", width)])
    height, text_in = (len(rows) + cols - 1) // cols, 0.16 * max(map(len, texts)) + 0.1  # 11 pt a line
    fig = Figure(figsize=(3.2 * cols, (3.0 + text_in) * height))
    grid = fig.add_gridspec(2 * height, cols, height_ratios=[2.8, text_in] * height, left=0.02, right=0.98,
                            top=0.98, bottom=0.01, wspace=0.1, hspace=0.05)
    for k, ((prompt, _, _, made, _), lines) in enumerate(zip(rows, texts)):
        show_media(fig.add_subplot(grid[2 * (k // cols), k % cols]), generated(prompt, made))
        ax = fig.add_subplot(grid[2 * (k // cols) + 1, k % cols])
        ax.set_axis_off()
        for j, (line, colour) in enumerate(lines):
            ax.annotate(line, (0, 1), xycoords="axes fraction", xytext=(0, -11 * j), textcoords="offset points",
                        va="top", fontsize=8, family="monospace", color=colour)
    fig.savefig(path, dpi=110)


def by_shapes(rows):
    """Exact match per (question kind, shapes in the image), the shapes counted by the world's analyser;
    and how many wrong answers name *another* shape's colour, shape, size or place (a binding failure:
    the model read the right kind of fact from the wrong shape); and each kind's commonest mistakes."""
    cells, other, mistakes = {}, {}, {}
    for prompt, truth, reply, _, _ in rows:
        images = [m["data"] for m in prompt["media"] if m["type"] == "image"]
        if truth is not None and images:  # the question's image is the last (earlier ones: --shots examples)
            kind, scene = prompt.get("kind", prompt["task"]), analyse_image(images[-1])
            cells.setdefault((kind, len(scene)), []).append(reply == truth)
            if reply == truth:
                continue
            mistakes.setdefault(kind, Counter())[f"{truth} -> {reply}"] += 1
            if kind in ("colour", "shape", "size", "position"):
                facts = {POSITIONS[o.cell] if kind == "position" else getattr(o, kind) for o in scene}
                other.setdefault(kind, []).append(reply in facts)
    for kind in sorted({k for k, _ in cells}):
        wrong = other.get(kind, [])
        print(f"{kind:>10}: " + "  ".join(f"{n} shape{'s' * (n != 1)} {sum(v)}/{len(v)} = {sum(v) / len(v):.3f}"
                                         for (k, n), v in sorted(cells.items()) if k == kind)
              + (f"  | wrong but another shape's: {sum(wrong)}/{len(wrong)}" if wrong else ""))
        if kind in mistakes:
            print(f"{'':>12}commonest mistakes (truth -> reply): "
                  + ", ".join(f"{pair} x{n}" for pair, n in mistakes[kind].most_common(3)))


def main(argv=None):
    try:
        return sample(build_parser().parse_args(argv))
    except UserError as e:  # something the user gave is wrong: one line; a bug keeps its traceback
        print(f"sample.py: error: {e}", file=sys.stderr)
        raise SystemExit(2)


def sample(args):
    if args.n < 1 or args.shots < 0:
        raise UserError("--n must be at least 1 and --shots at least 0")
    model, tok, ck = train.load_model(args.checkpoint, args.device)
    torch.manual_seed(args.seed)
    collator = Collator(tok, model.media_tokens, getattr(model.cfg, "max_seq", None))
    own = args.prompt or any(getattr(args, m) for m in USER_MEDIA)
    prompts = user_prompt(args) if own else toy_prompts(args, ck["phase"], train.recipe(train.model_module(ck["model_name"]), model.cfg))
    max_new = args.max_new_tokens or (32 if own else max(collator.length(t) for _, t in prompts) + 1)
    print(f"{ck['model_name']} after phase {ck['phase']!r} (step {ck['step']}), {len(prompts)} prompt(s)")
    try:
        replies, made = train.answer(model, collator, [p for p, _ in prompts], max_new, args.device,
                                     args.temperature, args.top_k)
    except UserError as e:  # e.g. a modality this model does not take, or a prompt too long
        raise UserError(f"cannot answer: {e}")
    rows = []
    for (p, t), r, m in zip(prompts, replies, made):  # a truth is judged against the whole sample
        whole = None if t is None else {**p, "conversations": p["conversations"] + [{"from": "gpt", "value": t}]}
        rows.append(Row(p, t, r, m, None if t is None else judge(p["task"], whole, r, m)))
    for i, (prompt, truth, reply, _, score) in enumerate(rows[:16]):
        mark = "" if truth is None else "  right" if score == 1 else f"  WRONG ({score:.2f})" if score else "  WRONG"
        print(f"[{i}] {question(prompt)}\n"
              f"    model: {reply or '(nothing)'}\n    truth: {'?' if truth is None else truth}{mark}")
    if len(rows) > 16:
        print(f"... and {len(rows) - 16} more")
    judged = [r for r in rows if r.truth is not None]
    if judged:
        print(f"{judge_name(judged[0].prompt['task'])} {sum(r.score for r in judged) / len(judged):.3f} over "
              f"{len(judged)} (exact match {sum(r.truth == r.reply for r in judged)}/{len(judged)})")
    if args.by_shapes:
        by_shapes(rows)
    draw(rows[:16], args.out)
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
