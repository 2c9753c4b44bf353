"""Named toy tasks. Each is a pure function of (split, index, seed) that returns one *sample*:

    {"id": "vqa/train/17", "task": "vqa", "kind": "colour",
     "conversations": [{"from": "human", "value": "<image> what colour is the circle?"},
                       {"from": "gpt", "value": "red"}],
     "media": [{"type": "image", "data": uint8 (64, 64, 3)}]}

This is the LLaVA conversation format: media markers (<image> <audio> <speech> <video>) sit in the
text where the media goes, and `media` lists the items in the order of their markers. Loss is taken
on "gpt" turns only (a text-only sample is a single gpt turn, or human and gpt turns for reading
comprehension). `kind` names the question type, so accuracy can be reported per type.

Splits. A sample's *content* (the discrete scene, beeps, utterance or motion, without the question
or the pixel jitter) is hashed into train (90%), val (5%) or test (5%), and a split only keeps the
content that hashes to it: no scene of the test split is ever seen in training, whatever the index.
(audio_qa hashes the beeps together with the question kind: a test question is never asked of
its clip in training, though another question may be.)
The "compose" split holds the content with held-out attribute combinations (world.HELDOUT_PAIRS
for shapes, HELDOUT_TONES for a beep's pitch and timbre), which train/val/test never show, for the
tasks in COMPOSE: it measures whether a model generalises to combinations it never saw, e.g. a red
triangle when it only saw red squares and blue triangles. A compose question that names an object
(or a beep) names a held-out one; content whose held-out pair cannot be asked about (on a video's
still distractor, say) belongs to no split.
"""
import hashlib
import zlib

import numpy as np

from . import sound, world
from .errors import UserError

SPLITS = ("train", "val", "test", "compose")
NUMBERS = ("zero", "one", "two", "three", "four")
HELDOUT_TONES = {("low", "saw"), ("mid", "sine"), ("high", "square")}
# the beeps train/val/test may hold
TONES = [sound.Beep(p, t) for p in sound.PITCHES for t in sound.TIMBRES if (p, t) not in HELDOUT_TONES]


def _bucket(content):
    h = int.from_bytes(hashlib.blake2b(repr(content).encode(), digest_size=8).digest(), "little")
    return "train" if h % 100 < 90 else "val" if h % 100 < 95 else "test"


def draw(task, split, index, seed, sample, novel=None):
    """Sample content for (task, split, index, seed) from `sample(rng)`, rejecting content that
    belongs to another split. `novel(content)` is True for compose content, False for content that
    the hash sends to train/val/test, None for content of no split. Returns the content and the
    rng, to be used for the rest."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {SPLITS}")
    if split == "compose" and novel is None:
        raise UserError(f"task {task!r} has no compose split (no held-out combinations)")
    rng = np.random.default_rng([seed, zlib.crc32(task.encode()), SPLITS.index(split), index])
    for _ in range(100_000):
        content = sample(rng)
        is_new = novel is not None and novel(content)
        if is_new is None:  # e.g. a held-out pair only on a video's distractor: neither seen nor tested
            continue
        if (split == "compose") == is_new and (is_new or _bucket(content) == split):
            return content, rng
    raise RuntimeError(f"could not draw a {split} sample for {task!r}")


def _sample(task, split, index, kind, turns, media=()):
    """Assemble a sample; `turns` alternate human, gpt, human, gpt ..."""
    roles = ["human", "gpt"] * len(turns)
    convs = [{"from": r, "value": v} for r, v in zip(roles, turns)]
    return {"id": f"{task}/{split}/{index}", "task": task, "kind": kind, "conversations": convs,
            "media": [{"type": t, "data": d} for t, d in media]}


def _image(split, index, seed, task, **scene_args):
    scene, rng = draw(task, split, index, seed, lambda r: world.sample_scene(r, **scene_args),
                      world.is_novel)
    return scene, rng, world.render_scene(scene, rng)


# ----------------------------------------------------------------------------- image tasks

def caption(split, index, seed=0):
    scene, rng, img = _image(split, index, seed, "caption")
    return _sample("caption", split, index, "caption", ["<image>", world.describe(scene)], [("image", img)])


def cells(split, index, seed=0):
    """The scene as a table read cell by cell (the 3x3 grid in reading order): the size, colour and
    shape of the object in each cell, or "empty" three times. A fixed layout, the words of cell k are
    always words 3k to 3k+2, for attribute pre-training of an image encoder (nano_llava's 'vision')."""
    scene, rng, img = _image(split, index, seed, "cells")
    at = {o.cell: o for o in scene}
    words = [w for c in range(9) for w in ((at[c].size, at[c].colour, at[c].shape) if c in at else ("empty",) * 3)]
    return _sample("cells", split, index, "cells", ["<image>", " ".join(words)], [("image", img)])


VQA_KINDS = ("colour", "shape", "position", "size", "count")


def ask(scene, rng, split):
    """One random question about a scene: (kind, question, answer). In the compose split, a
    question that names an object names a held-out one."""
    kind = VQA_KINDS[int(rng.integers(len(VQA_KINDS)))]
    pool = [o for o in scene if world.is_novel([o])] if split == "compose" else scene
    o = pool[int(rng.integers(len(pool)))]
    question, answer = {
        "colour": (f"what colour is the {o.shape}?", o.colour),
        "shape": (f"what shape is the {o.colour} one?", o.shape),
        "position": (f"where is the {o.colour} {o.shape}?", world.POSITIONS[o.cell]),
        "size": (f"what size is the {o.colour} {o.shape}?", o.size),
        "count": ("how many shapes are there?", NUMBERS[len(scene)]),
    }[kind]
    return kind, question, answer


def with_image(question, rng):
    """LLaVA (2304.08485, eq. 2) puts the image before or after the first question at random."""
    return f"<image>\n{question}" if rng.random() < 0.5 else f"{question}\n<image>"


def vqa(split, index, seed=0, task="vqa", min_objects=1, max_objects=3):
    scene, rng, img = _image(split, index, seed, task, min_objects=min_objects, max_objects=max_objects)
    kind, question, answer = ask(scene, rng, split)
    return _sample(task, split, index, kind, [with_image(question, rng), answer], [("image", img)])


def conversation(split, index, seed=0, turns=4):
    """A multi-turn conversation about one image, as in LLaVA-Instruct: several questions, each
    answered (and trained on) in turn; never the same question twice. The kind is the last one's."""
    scene, rng, img = _image(split, index, seed, "conversation")
    kind, texts = distinct_questions(scene, rng, split, turns)
    texts[0] = with_image(texts[0], rng)
    return _sample("conversation", split, index, kind, texts, [("image", img)])


def distinct_questions(scene, rng, split, turns):
    """`turns` distinct questions about a scene, each followed by its answer: (the last one's kind,
    [q1, a1, q2, a2, ...]). Distinct, because a repeated question could be answered by copying."""
    qa = []
    while len(qa) < turns:
        kind, question, answer = ask(scene, rng, split)
        if question not in [q for _, q, _ in qa]:
            qa.append((kind, question, answer))
    return qa[-1][0], [t for _, q, a in qa for t in (q, a)]


def vqa_one(split, index, seed=0):
    """VQA on scenes of a single shape: the first step of a curriculum."""
    return vqa(split, index, seed, task="vqa_one", max_objects=1)


PAIRS = [(c, s) for c in world.COLOURS for s in world.SHAPES]


def interleaved(split, index, seed=0, task="interleaved", images=(2, 3)):
    """A multi-image document: `images` images (a count, or an inclusive (min, max) range), each
    captioned by colour and shape only, then a question about the position or size of one of them:
    the answer is only in that image. No two images show the same (colour, shape) pair, so the
    question names one image; colours and shapes alone may repeat, as they must beyond 3 images."""
    lo, hi = (images, images) if isinstance(images, int) else images
    # train/val/test draw from the pairs they may show: rejecting held-out ones would favour short documents
    pairs = PAIRS if split == "compose" else [p for p in PAIRS if p not in world.HELDOUT_PAIRS]

    def sample(rng):
        n = int(rng.integers(lo, hi + 1))
        return tuple(world.Obj(int(rng.integers(9)), *pairs[k], str(rng.choice(world.SIZES)))
                     for k in rng.choice(len(pairs), n, replace=False))
    objs, rng = draw(task, split, index, seed, sample, world.is_novel)
    turns, media = [], []
    for o in objs:
        turns += ["<image>", f"a {o.colour} {o.shape}"]
        media.append(("image", world.render_scene([o], rng)))
    pool = [o for o in objs if world.is_novel([o])] if split == "compose" else objs
    o = pool[int(rng.integers(len(pool)))]
    kind = "position" if rng.random() < 0.5 else "size"
    if kind == "position":
        turns += [f"where was the {o.colour} {o.shape}?", world.POSITIONS[o.cell]]
    else:
        turns += [f"what size was the {o.colour} {o.shape}?", o.size]
    return _sample(task, split, index, kind, turns, media)


def interleaved_long(split, index, seed=0):
    """Documents of 6-8 images, longer than `interleaved`'s: is a model trained on 2-3 images
    still able to find the one that answers?"""
    return interleaved(split, index, seed, task="interleaved_long", images=(6, 8))


def text_to_image(split, index, seed=0):
    scene, rng, img = _image(split, index, seed, "text_to_image")
    return _sample("text_to_image", split, index, "draw",
                   [f"draw {world.describe(scene)}.", "<image>"], [("image", img)])


# ----------------------------------------------------------------------------- other modalities

AUDIO_KINDS = ("count", "first_pitch", "last_pitch", "first_timbre", "last_timbre")


def audio_novel(content):
    """audio_qa's compose test: True if any beep is a held-out (pitch, timbre) pair, but None (no
    split) if the question asks about the first or last beep and that one is not held out."""
    beeps, kind = content
    if not any(b in HELDOUT_TONES for b in beeps):
        return False
    return True if kind == "count" or beeps[0 if kind.startswith("first") else -1] in HELDOUT_TONES else None


def audio_qa(split, index, seed=0):
    """A clip of 1-4 beeps and one question: how many, or the pitch or timbre of the first or last
    beep. The content is the beeps together with the question kind."""
    # train/val/test draw from the beeps they may hold: rejecting held-out ones would favour short clips
    def sample(rng):
        beeps = sound.sample_tones(rng, None if split == "compose" else TONES)
        return beeps, AUDIO_KINDS[int(rng.integers(len(AUDIO_KINDS)))]
    (beeps, kind), rng = draw("audio_qa", split, index, seed, sample, audio_novel)
    if kind == "count":
        question, answer = "how many beeps are there?", NUMBERS[len(beeps)]
    else:
        which, attribute = kind.split("_")
        beep = beeps[0 if which == "first" else -1]
        question, answer = f"what {attribute} is the {which} beep?", getattr(beep, attribute)
    wav = sound.render_tones(beeps, rng)
    return _sample("audio_qa", split, index, kind, [f"<audio> {question}", answer], [("audio", wav)])


def speech(split, index, seed=0):
    utt, rng = draw("speech", split, index, seed, sound.sample_utterance)
    wav = sound.render_speech(utt, rng)
    return _sample("speech", split, index, "transcribe",
                   ["<speech> what digits are said?", " ".join(utt["digits"])], [("speech", wav)])


def video_novel(m):
    """video_qa's compose test: the mover is a held-out pair. A held-out pair on the still
    distractor alone is no split's: train/val/test never show one, and compose asks about the mover."""
    if (m.colour, m.shape) in world.HELDOUT_PAIRS:
        return True
    return None if m.distractor and tuple(m.distractor[:2]) in world.HELDOUT_PAIRS else False


def video_qa(split, index, seed=0):
    motion, rng = draw("video_qa", split, index, seed, world.sample_motion, video_novel)
    kind = ("direction", "colour", "shape")[int(rng.integers(3))]
    question, answer = {
        "direction": (f"which way does the {motion.colour} {motion.shape} move?", motion.direction),
        "colour": ("what colour is the moving shape?", motion.colour),
        "shape": ("what shape is moving?", motion.shape),
    }[kind]
    frames = world.render_video(motion, rng)
    return _sample("video_qa", split, index, kind, [f"<video> {question}", answer], [("video", frames)])


def counted(n, noun):
    """'is one shape', 'are two shapes'."""
    return f"is one {noun}" if n == 1 else f"are {NUMBERS[n]} {noun}s"


def text(split, index, seed=0):
    """Text-only sentences of the same grammar, for language-model pre-training. Half of them are
    reading comprehension: a scene described in words, a question about it and its answer, meant to
    teach the language model to look things up in its context, as real LLMs can before LLaVA (a
    small LLM learns this slowly: see README). A quarter of those are a human turn (the scene and a
    question) and a gpt answer, and a quarter a conversation of two questions, so that a language
    model frozen after this (Flamingo, CogVLM) knows the template the multimodal tasks use."""
    def sample(rng):  # never a held-out pair: "a red triangle" must not be seen in training
        while True:
            form, scene = int(rng.integers(8)), world.sample_scene(rng)
            if not world.is_novel(scene):
                return form, scene, sound.sample_tones(rng, TONES), sound.sample_utterance(rng)
    (form, scene, tones, utt), rng = draw("text", split, index, seed, sample)
    o = scene[0]
    described = world.describe(scene)
    if form < 4:
        turns = [[
            described,
            f"the {o.colour} {o.shape} is {o.size} and at the {world.POSITIONS[o.cell]}",
            f"there {counted(len(scene), 'shape')} and "
            + " then ".join(f"a {b.pitch} {b.timbre} beep" for b in tones),
            "the digits are " + " ".join(utt["digits"]),
        ][form]]
    elif form in (4, 6):  # one gpt turn: the model reads the scene and answers, but is trained on all of it
        _, question, answer = ask(scene, rng, split)
        turns = [f"{described}. {question} {answer}" if form == 4 else f"{question} {described}. {answer}"]
    elif form == 5:
        _, question, answer = ask(scene, rng, split)
        turns = [f"{described}. {question}", answer]
    else:
        (_, q1, a1), (_, q2, a2) = ask(scene, rng, split), ask(scene, rng, split)
        while q2 == q1:  # distinct questions: a repeat could be answered by copying
            _, q2, a2 = ask(scene, rng, split)
        turns = [f"{described}. {q1}", a1, q2, a2]
    roles = ["gpt"] if len(turns) == 1 else ["human", "gpt"] * (len(turns) // 2)
    return {"id": f"text/{split}/{index}", "task": "text", "kind": "text",
            "conversations": [{"from": r, "value": v} for r, v in zip(roles, turns)], "media": []}


def read(split, index, seed=0, turns=4):
    """Reading comprehension in the chat template: a scene in words, before or after the first
    question as `vqa` places its image, then `turns` distinct questions, each answered in turn (the
    loss is on the answers). What a language model that is frozen afterwards (Flamingo, CogVLM)
    must already do well: every answer it will ever give about an image, it looks up like this."""
    scene, rng = draw("read", split, index, seed, known_scene)
    kind, texts = distinct_questions(scene, rng, split, turns)
    texts[0] = with_image(texts[0], rng).replace("<image>", world.describe(scene) + ".")
    return _sample("read", split, index, kind, texts)


def sizes(split, index, seed=0):
    """A scene in words, then how many of its shapes are small and how many large. Nothing else in
    the corpus uses the two size words apart from a lookup, so without it a small LM's rows for them
    merge and it never looks size up (docs/cogvlm.md, r4). Not in `text`: LLaVA's decoder, pre-trained
    with it, then learned size from images far worse (docs/llava.md); the frozen-LM recipes add it."""
    scene, _ = draw("sizes", split, index, seed, known_scene)
    said = by_size(sum(o.size == "small" for o in scene), len(scene))
    return {"id": f"sizes/{split}/{index}", "task": "sizes", "kind": "text",
            "conversations": [{"from": "gpt", "value": f"{world.describe(scene)}. {said}"}], "media": []}


def by_size(small, n):
    """n shapes counted by size, `small` of them small: 'there is one small shape and there are two large shapes'."""
    return f"there {counted(small, 'small shape')} and there {counted(n - small, 'large shape')}"


def known_scene(rng):
    """A scene with no held-out pair, for the text tasks: "a red triangle" must never be read in training."""
    while True:
        scene = world.sample_scene(rng)
        if not world.is_novel(scene):
            return scene


TASKS = {f.__name__: f for f in (caption, cells, vqa, vqa_one, conversation, interleaved, interleaved_long,
                                 text_to_image, audio_qa, speech, video_qa, text, read, sizes)}
COMPOSE = set(TASKS) - {"speech", "text", "read", "sizes"}  # the tasks with held-out combinations, hence a compose split


def get_sample(task, split, index, seed=0):
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    return TASKS[task](split, index, seed)


# every word the grammar can produce: the tokenizer's vocabulary
WORDS = sorted(set(
    list(world.COLOURS) + list(world.SHAPES) + list(world.SIZES)
    + " ".join(world.POSITIONS).split() + list(world.DIRECTIONS) + list(NUMBERS)
    + list(sound.PITCHES) + list(sound.TIMBRES) + list(sound.DIGITS)
    + """a and at the what colour shape is one where size how many shapes are there was draw empty
    beep beeps pitch it timbre digits said which way does move moving first last then""".split()))
PUNCTUATION = ("?", ".", "\n")
