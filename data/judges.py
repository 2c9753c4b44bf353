"""Judges: how a model's reply to a held-out sample is scored, per task, in [0, 1].

    judge(sample, reply, media) -> score

`sample` is the whole sample (its last gpt turn is the truth), `reply` the model's text up to
<eos>, with each generated media item as its marker, and `media` the generated items by modality
(images (N, 3, H, W) in [0, 1]). Exact match is the default. Speech is scored by word accuracy,
the fraction of the truth's words that survive a word-level edit distance, so "one two" for
"one two three" earns 2/3; train.py reports its exact match beside it. A drawn image is read back
by the world's analyser and must show exactly the scene the prompt describes.
"""
import re

import numpy as np

from . import world


def truth(sample):
    return sample["conversations"][-1]["value"]


def exact(sample, reply, media):
    return float(reply == truth(sample))


def edit_distance(a, b):
    """Levenshtein distance between two sequences (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def word_accuracy(sample, reply, media):
    words = truth(sample).split()
    return max(0.0, 1 - edit_distance(words, reply.split()) / len(words))


OBJECT = re.compile(rf"a ({'|'.join(world.SIZES)}) ({'|'.join(world.COLOURS)}) ({'|'.join(world.SHAPES)}) "
                    rf"at the ({'|'.join(sorted(world.POSITIONS, key=len, reverse=True))})\b")


def scene_of(text):
    """The scene a caption (world.describe) names, in cell order: the inverse of describe."""
    objects = [world.Obj(world.POSITIONS.index(p), c, s, z) for z, c, s, p in OBJECT.findall(text)]
    return tuple(sorted(objects))


def drawn_scene(sample, reply, media):
    """1 if the reply is one image and the analyser reads from it the scene the prompt describes."""
    images = media.get("image")
    if reply != "<image>" or images is None or len(images) != 1:
        return 0.0
    pixels = (images[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()
    prompt = " ".join(t["value"] for t in sample["conversations"][:-1])
    return float(world.analyse_image(np.ascontiguousarray(pixels)) == scene_of(prompt))


JUDGES = {"speech": word_accuracy, "caption": word_accuracy, "text_to_image": drawn_scene}
NAMES = {exact: "exact match", word_accuracy: "word accuracy", drawn_scene: "drawn scene"}


def judge(task, sample, reply, media):
    """The score of one reply: the task's judge, exact match by default."""
    return JUDGES.get(task, exact)(sample, reply, media)


def judge_name(task):
    """What a task's score is called in reports."""
    return NAMES[JUDGES.get(task, exact)]
