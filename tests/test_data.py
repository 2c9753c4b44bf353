"""Tests for the toy world's data contract (docs/DESIGN.md section 2): tasks, splits, tokenizer, collation.

Content is checked from the media themselves where possible (world.analyse_image for pictures, a
small spectrum analyser for tones, exact palette colours for videos), so a sample's text, its
media and its split are tested against each other instead of against the code that made them.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data import sound, tasks, world
from data.collate import IGNORE, Collator, Mixture, make_loader, media_tensor
from data.tasks import HELDOUT_TONES, SPLITS, TASKS, get_sample
from data.tokenizer import MEDIA, SPECIALS, Tokenizer

REPO = Path(__file__).resolve().parents[1]
MEDIA_TOKENS = {"image": 5, "audio": 3, "speech": 2, "video": 4}
NO_COMPOSE = {"speech", "text", "read", "sizes"}
HOLDOUT = ("train", "val", "test")
TOK = Tokenizer()
MARKER_IDS = {TOK.stoi[f"<{m}>"]: m for m in MEDIA}
MEDIA_SHAPES = {"image": (np.uint8, (world.IMAGE_SIZE, world.IMAGE_SIZE, 3)),
                "video": (np.uint8, (world.VIDEO_FRAMES, world.VIDEO_SIZE, world.VIDEO_SIZE, 3)),
                "audio": (np.float32, (int(sound.SAMPLE_RATE * sound.AUDIO_SECONDS),)),
                "speech": (np.float32, (int(sound.SAMPLE_RATE * sound.SPEECH_SECONDS),))}


def splits_of(task):
    return HOLDOUT if task in NO_COMPOSE else SPLITS


_CACHE = {}


def samples(task, split, n):
    """The first n samples (seed 0) of a task's split, generated once per test session."""
    got = _CACHE.setdefault((task, split), [])
    while len(got) < n:
        got.append(get_sample(task, split, len(got)))
    return got[:n]


def digest(sample, with_id=True):
    """A hash of every byte of a sample: its text fields and each media array's dtype, shape, data."""
    h = hashlib.sha256()
    fields = {k: sample[k] for k in ("id", "task", "kind", "conversations") if with_id or k != "id"}
    h.update(json.dumps(fields, sort_keys=True).encode())
    for m in sample["media"]:
        a = np.asarray(m["data"])
        h.update(f"{m['type']}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def all_digests():
    """Digests of a few samples of every task and split (also run in a subprocess, see below)."""
    return {f"{t}/{s}/{i}": digest(get_sample(t, s, i, seed))
            for t in TASKS for s in splits_of(t) for i, seed in ((7, 3),)}


def text_of(sample):
    return " ".join(t["value"] for t in sample["conversations"])


def markers_in(text):
    return re.findall(r"<(image|audio|speech|video)>", text)


# ----------------------------------------------------------------------------- content analysers

PAIR_RE = re.compile(rf"\b({'|'.join(world.COLOURS)}) ({'|'.join(world.SHAPES)})\b")
TONE_RE = re.compile(rf"\b({'|'.join(sound.PITCHES)}) ({'|'.join(sound.TIMBRES)})\b")


def pairs_in_text(text):
    """Every "colour shape" pair a text mentions, e.g. "a small red circle at the top" -> (red, circle)."""
    return set(PAIR_RE.findall(text))


def analyse_tones(wav):
    """Read a tones clip back into its beeps, a tuple of (pitch, timbre): a beep is a run of loud
    10 ms frames between silences; in each, the loudest frequency gives the pitch band, and the 2nd
    and 3rd harmonics relative to it the timbre (saw has both, square only odd ones, sine neither)."""
    x = np.asarray(wav, dtype=np.float64)
    rms = np.sqrt((x[: len(x) // 160 * 160].reshape(-1, 160) ** 2).mean(1))
    on = np.concatenate([[False], rms > 0.3 * rms.max(), [False]])
    starts, ends = np.nonzero(on[1:] & ~on[:-1])[0], np.nonzero(on[:-1] & ~on[1:])[0]
    freqs = np.fft.rfftfreq(sound.SAMPLE_RATE, 1 / sound.SAMPLE_RATE)
    beeps = []
    for a, b in zip(starts * 160, ends * 160):
        spec = np.abs(np.fft.rfft(x[a:b] * np.hanning(b - a), sound.SAMPLE_RATE))  # 1 Hz bins
        band = (freqs > 150) & (freqs < 2000)
        f0 = freqs[band][spec[band].argmax()]

        def peak(f):
            return spec[np.abs(freqs - f) < 15].max()

        a2, a3 = peak(2 * f0) / peak(f0), peak(3 * f0) / peak(f0)
        pitch = "low" if f0 < 400 else "mid" if f0 < 1000 else "high"
        beeps.append((pitch, "saw" if a2 > 0.25 else "square" if a3 > 0.15 else "sine"))
    return tuple(beeps)


def video_mover(frames):
    """The (colour, shape) of a video's moving object: the one whose pixels' centre travels."""
    def centre(f, rgb):
        return np.argwhere((f == np.array(rgb, dtype=np.uint8)).all(-1)).mean(0)
    (mover,) = [(c, s) for c, s in video_pairs(frames)
                if np.abs(centre(frames[-1], world.COLOURS[c]) - centre(frames[0], world.COLOURS[c])).max() > 4]
    return mover


def video_pairs(frames):
    """The (colour, shape) of every object in a video: exact palette colours (the renderer does not
    anti-alias), the shape from how much of its bounding box it fills (median over frames)."""
    out = set()
    for name, rgb in world.COLOURS.items():
        fills = []
        for f in frames:
            m = (f == np.array(rgb, dtype=np.uint8)).all(-1)
            if m.sum() >= 10:
                ys, xs = np.nonzero(m)
                fills.append(m.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
        if fills:
            fill = float(np.median(fills))
            out.add((name, "triangle" if fill < 0.65 else "circle" if fill < 0.9 else "square"))
    return out


def scenes_of(sample):
    """The analysed scene of every image in a sample."""
    return [world.analyse_image(m["data"]) for m in sample["media"] if m["type"] == "image"]


def pairs_of(sample):
    """Every (colour, shape) pair in a sample's media, read from the pixels."""
    if sample["task"] == "video_qa":
        return video_pairs(sample["media"][0]["data"])
    return {(o.colour, o.shape) for scene in scenes_of(sample) for o in scene}


# ----------------------------------------------------------------------------- 1. determinism

@pytest.mark.parametrize("task", list(TASKS))
def test_every_split_yields_well_formed_samples(task):
    """Every split of every task draws samples in the LLaVA format, with markers matching media."""
    for split in splits_of(task):
        for i, s in enumerate(samples(task, split, 3)):
            assert s["id"] == f"{task}/{split}/{i}" and s["task"] == task and isinstance(s["kind"], str)
            roles = [t["from"] for t in s["conversations"]]
            assert roles == ["human", "gpt"] * (len(roles) // 2) or task in ("text", "sizes") and roles == ["gpt"], s["id"]
            assert markers_in(text_of(s)) == [m["type"] for m in s["media"]]
            for m in s["media"]:
                dtype, shape = MEDIA_SHAPES[m["type"]]
                assert m["data"].dtype == dtype and m["data"].shape == shape, (s["id"], m["type"])


@pytest.mark.parametrize("task", list(TASKS))
def test_same_arguments_give_identical_bytes(task):
    """(task, split, index, seed) fixes every byte of the sample: text and media arrays."""
    for split in splits_of(task):
        for i, seed in ((0, 0), (5, 2)):
            assert digest(get_sample(task, split, i, seed)) == digest(get_sample(task, split, i, seed))


@pytest.mark.parametrize("task", list(TASKS))
def test_other_index_or_seed_gives_other_sample(task):
    """Changing the index or the seed changes the sample itself, not only its id."""
    for split in splits_of(task):
        base = digest(get_sample(task, split, 4, 0), with_id=False)
        assert base != digest(get_sample(task, split, 5, 0), with_id=False), (split, "index")
        assert base != digest(get_sample(task, split, 4, 1), with_id=False), (split, "seed")


def test_samples_are_identical_in_a_fresh_process():
    """Samples do not depend on process state such as Python's randomised str hash."""
    code = (f"import json, sys; sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]; "
            "import test_data; print(json.dumps(test_data.all_digests()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == all_digests()


# ----------------------------------------------------------------------------- 2. splits

def test_image_splits_share_no_scene():
    """vqa and caption: no analysed scene appears in two of train/val/test, within or across tasks."""
    scenes = {}
    for split, n in (("train", 300), ("val", 120), ("test", 120)):
        scenes[split] = set()
        for task in ("vqa", "caption"):
            for s in samples(task, split, n):
                (scene,) = scenes_of(s)
                if task == "caption":  # the analysis is right, so the comparison below means something
                    assert world.describe(scene) == s["conversations"][1]["value"], s["id"]
                scenes[split].add(scene)
        assert len(scenes[split]) > 100, split  # enough distinct scenes for the test to have teeth
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not scenes[a] & scenes[b], (a, b, sorted(scenes[a] & scenes[b])[:3])


AUDIO_N = {"train": 300, "val": 300, "test": 300, "compose": 300}


def test_audio_qa_splits_share_no_content():
    """audio_qa: the analysed beeps together with the question kind never appear in two splits, and
    every split holds at least 50 of them, with every kind of question in test."""
    contents = {}
    for split in SPLITS:
        contents[split] = set()
        for s in samples("audio_qa", split, AUDIO_N[split]):
            beeps = analyse_tones(s["media"][0]["data"])
            answer = s["conversations"][1]["value"]
            if s["kind"] == "count":
                expected = tasks.NUMBERS[len(beeps)]
            else:
                which, attribute = s["kind"].split("_")
                expected = beeps[0 if which == "first" else -1][attribute == "timbre"]
            assert answer == expected, (s["id"], beeps)  # the answer is what the clip sounds like
            contents[split].add((beeps, s["kind"]))
        assert len(contents[split]) >= 50, (split, len(contents[split]))
    assert {k for _, k in contents["test"]} == set(tasks.AUDIO_KINDS)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not contents[a] & contents[b], (a, b, contents[a] & contents[b])


def test_speech_splits_share_no_utterance():
    """speech: the transcript is the whole content, and no transcript appears in two splits."""
    said = {split: {s["conversations"][1]["value"] for s in samples("speech", split, 80)} for split in HOLDOUT}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not said[a] & said[b], (a, b, said[a] & said[b])


def test_split_proportions_are_90_5_5():
    """_bucket sends about 90% / 5% / 5% of distinct scenes to train / val / test."""
    rng = np.random.default_rng(0)
    scenes = {world.sample_scene(rng) for _ in range(6000)}
    share = {k: v / len(scenes) for k, v in Counter(tasks._bucket(s) for s in scenes).items()}
    assert len(scenes) > 4000
    assert abs(share["train"] - 0.90) < 0.02 and abs(share["val"] - 0.05) < 0.015 \
        and abs(share["test"] - 0.05) < 0.015, share


# ----------------------------------------------------------------------------- 3. compose split

@pytest.mark.parametrize("task", ["vqa", "vqa_one", "caption", "cells", "interleaved", "interleaved_long",
                                  "text_to_image", "video_qa"])
def test_heldout_pairs_only_in_compose(task):
    """Every compose sample shows a held-out (colour, shape) pair; no train/val/test sample does."""
    n = {"train": 300, "val": 120, "test": 120, "compose": 100}  # vqa/caption: cached by the split test
    if task not in ("vqa", "caption"):
        n = {"train": 150, "val": 70, "test": 70, "compose": 80}
    for split in SPLITS:
        for s in samples(task, split, n[split]):
            pairs = pairs_of(s)
            assert pairs, s["id"]
            if task in ("caption", "interleaved", "interleaved_long", "text_to_image"):  # the text names them
                assert pairs_in_text(text_of(s)) == pairs, s["id"]
            assert bool(pairs & world.HELDOUT_PAIRS) == (split == "compose"), (s["id"], pairs)


def test_cells_text_is_the_analysed_scene_cell_by_cell():
    """`cells` names every cell in reading order with 3 words: the object the analyser reads from
    the pixels there (size, colour, shape), or "empty" three times."""
    for s in samples("cells", "train", 60) + samples("cells", "test", 20):
        words = s["conversations"][1]["value"].split(" ")
        assert len(words) == 27 and s["conversations"][0]["value"] == "<image>", s["id"]
        at = {o.cell: o for o in world.analyse_image(s["media"][0]["data"])}
        for c in range(9):
            want = [at[c].size, at[c].colour, at[c].shape] if c in at else ["empty"] * 3
            assert words[3 * c:3 * c + 3] == want, (s["id"], c)


@pytest.mark.parametrize("task, images", [("interleaved", (2, 3)), ("interleaved_long", (6, 8))])
def test_interleaved_images_are_distinct_pairs(task, images):
    """interleaved documents hold 2-3 images and interleaved_long ones 6-8 (any count on request),
    each image a different (colour, shape) pair read from its pixels, so a question names one image."""
    counts = Counter()
    for s in samples(task, "train", 60) + samples(task, "compose", 30):
        pairs = [(o.colour, o.shape) for scene in scenes_of(s) for o in scene]
        assert len(set(pairs)) == len(pairs) == len(s["media"]), s["id"]
        counts[len(pairs)] += 1
    assert set(counts) == set(range(images[0], images[1] + 1)), counts
    assert len(tasks.interleaved("test", 0, images=5)["media"]) == 5


QUESTIONS = [  # (pattern, attributes the question names, attribute it asks for)
    (r"what colour is the (?P<shape>\w+)\?", "colour"),
    (r"what shape is the (?P<colour>\w+) one\?", "shape"),
    (r"where (?:is|was) the (?P<colour>\w+) (?P<shape>\w+)\?", "position"),
    (r"what size (?:is|was) the (?P<colour>\w+) (?P<shape>\w+)\?", "size"),
]


@pytest.mark.parametrize("task", ["vqa", "vqa_one", "interleaved", "interleaved_long"])
def test_compose_questions_name_a_heldout_object(task):
    """A compose question that names an object names a held-out one, and its answer is right."""
    named = 0
    for s in samples(task, "compose", 100):
        question = s["conversations"][-2]["value"].replace("<image>\n", "").replace("\n<image>", "")
        answer = s["conversations"][-1]["value"]
        objects = [o for scene in scenes_of(s) for o in scene]
        if question == "how many shapes are there?":
            assert answer == tasks.NUMBERS[len(objects)], s["id"]
            continue
        (match, asks), = [(re.fullmatch(p, question), a) for p, a in QUESTIONS if re.fullmatch(p, question)]
        (o,) = [o for o in objects if all(getattr(o, k) == v for k, v in match.groupdict().items())]
        assert (o.colour, o.shape) in world.HELDOUT_PAIRS, (s["id"], question, o)
        assert answer == (world.POSITIONS[o.cell] if asks == "position" else getattr(o, asks)), s["id"]
        named += 1
    assert named >= 50


def test_audio_qa_heldout_tones_only_in_compose():
    """Every audio_qa compose clip has a held-out (pitch, timbre) beep, and a question about the first
    or last beep asks about a held-out one; no train/val/test clip has any held-out beep."""
    for split in SPLITS:
        for s in samples("audio_qa", split, AUDIO_N[split]):
            beeps = analyse_tones(s["media"][0]["data"])
            assert bool(set(beeps) & HELDOUT_TONES) == (split == "compose"), (s["id"], beeps)
            if split == "compose" and s["kind"] != "count":
                assert beeps[0 if s["kind"].startswith("first") else -1] in HELDOUT_TONES, (s["id"], beeps)


def test_video_qa_compose_mover_is_heldout():
    """In video_qa compose the moving shape, read from the pixels, is a held-out pair (a held-out
    pair only on the still distractor is no split's), and the answers are about it."""
    with_distractor = 0
    for s in samples("video_qa", "compose", 80):
        frames, (question, answer) = s["media"][0]["data"], [t["value"] for t in s["conversations"]]
        mover = video_mover(frames)
        assert mover in world.HELDOUT_PAIRS, (s["id"], mover)
        if s["kind"] == "direction":
            assert f"the {mover[0]} {mover[1]} move" in question, s["id"]
        else:
            assert answer == mover[s["kind"] == "shape"], s["id"]
        with_distractor += len(video_pairs(frames)) == 2
    assert with_distractor >= 20  # the distractor is there, and is not what counts


def test_text_sentences_never_mention_heldout_pairs():
    """LM sentences in train/val/test never mention a held-out shape or tone pair."""
    mentioned = 0
    for split in HOLDOUT:
        for s in samples("text", split, 100):
            sentence = text_of(s)
            pairs, tones = pairs_in_text(sentence), set(TONE_RE.findall(sentence))
            assert not pairs & world.HELDOUT_PAIRS and not tones & HELDOUT_TONES, (s["id"], sentence)
            mentioned += bool(pairs or tones)
    assert mentioned > 100


POSITION_RE = "|".join(sorted(world.POSITIONS, key=len, reverse=True))  # "top left" before "top"
SCENE_RE = re.compile(rf"a ({'|'.join(world.SIZES)}) (\w+) (\w+) at the ({POSITION_RE})\b")


def test_sizes_counts_the_described_scene_by_size():
    """`sizes` follows a scene in words with how many of its shapes are small and large: the counts
    are the scene's, so a language model must tell the two size words apart to predict them."""
    for s in samples("sizes", "train", 100):
        described, counts = text_of(s).split(". there ")
        scene = [world.Obj(world.POSITIONS.index(p), c, sh, z) for z, c, sh, p in SCENE_RE.findall(described)]
        assert world.describe(scene) == described, s["id"]
        said = dict((z, tasks.NUMBERS.index(n)) for n, z in re.findall(r"(\w+) (small|large) shapes?", counts))
        assert said == {z: sum(o.size == z for o in scene) for z in world.SIZES}, (s["id"], counts)


def test_text_conversations_answer_from_the_described_scene():
    """Some text samples use the human/gpt template: the scene and a question, its answer, and in
    some a second, different question; every answer is right for the scene the human turn describes."""
    templates = Counter()
    for s in samples("text", "train", 200):
        turns = [t["value"] for t in s["conversations"]]
        if len(turns) == 1:
            continue
        templates[len(turns)] += 1
        described, question = turns[0].rsplit(". ", 1)
        answered_from(described, [question] + turns[2::2], turns[1::2], s["id"])
    assert templates[2] >= 10 and templates[4] >= 10, templates


def answered_from(described, questions, answers, sid):
    """The questions are distinct, and each answer is right for the scene `described` in words."""
    scene = [world.Obj(world.POSITIONS.index(p), c, sh, z) for z, c, sh, p in SCENE_RE.findall(described)]
    assert world.describe(scene) == described and len(set(questions)) == len(questions), sid
    for q, answer in zip(questions, answers):
        if q == "how many shapes are there?":
            assert answer == tasks.NUMBERS[len(scene)], sid
            continue
        (match, asks), = [(re.fullmatch(p, q), a) for p, a in QUESTIONS if re.fullmatch(p, q)]
        (o,) = [o for o in scene if all(getattr(o, k) == v for k, v in match.groupdict().items())]
        assert answer == (world.POSITIONS[o.cell] if asks == "position" else getattr(o, asks)), sid


def test_read_asks_four_questions_about_a_scene_in_words():
    """`read`: a scene in words before or after the first question (as `vqa` places its image), then
    four distinct questions, each answered right for the scene; never a held-out pair; every kind."""
    before, kinds = 0, Counter()
    for split in HOLDOUT:
        for s in samples("read", split, 60):
            turns = [t["value"] for t in s["conversations"]]
            assert len(turns) == 8 and not s["media"] and not pairs_in_text(turns[0]) & world.HELDOUT_PAIRS
            first, second = turns[0].split("\n")
            described, question = (first[:-1], second) if first.endswith(".") else (second[:-1], first)
            before += first.endswith(".")
            answered_from(described, [question] + turns[2::2], turns[1::2], s["id"])
            kinds[s["kind"]] += split == "test"
    assert 40 < before < 140 and set(kinds) == set(tasks.VQA_KINDS), (before, kinds)


def test_compose_declaration_matches_the_tasks():
    """tasks.COMPOSE names exactly the tasks that accept split="compose"."""
    for task in TASKS:
        if task in tasks.COMPOSE:
            get_sample(task, "compose", 0)
        else:
            with pytest.raises(ValueError, match="no compose split"):
                get_sample(task, "compose", 0)
    assert set(TASKS) - tasks.COMPOSE == NO_COMPOSE


@pytest.mark.parametrize("task", sorted(NO_COMPOSE))
def test_tasks_without_compose_split_raise(task):
    """speech and text have no held-out combinations: asking for compose is a clear ValueError."""
    with pytest.raises(ValueError, match=rf"{task!r}.*no compose split"):
        get_sample(task, "compose", 0)


def test_unknown_task_or_split_raises():
    """A misspelt task or split is a ValueError that lists the valid names."""
    with pytest.raises(ValueError, match="available: caption"):
        get_sample("vqa2", "train", 0)
    with pytest.raises(ValueError, match="expected one of"):
        get_sample("vqa", "training", 0)


# ----------------------------------------------------------------------------- 4. tokenizer

PIECES = (list(tasks.WORDS) + list(SPECIALS) + list(tasks.PUNCTUATION)
          + ["!", ",", "<", ">", "<>", "<0x41>", "<imag", "image>", "<IMAGE>", "é", "ß", "漢字", "日本語",
             "😀", "👍🏽", "👩‍👩‍👧", "\u0301", "\u200b", "\ufeff", "\x00", "\x7f", "\t", "\n", "\r\n", " ",
             "  ", "   ", "What", "RED", "x9", "0", "42", "ы", "redcircle", "a1"])
SEPARATORS = ["", " ", " ", " ", "  ", "\n", "\t"]


def random_text(rng):
    parts = []
    for _ in range(int(rng.integers(0, 12))):
        if rng.random() < 0.15:  # any code point except surrogates, which are not UTF-8
            c = int(rng.integers(1, 0x30000))
            parts.append(chr(c) if not 0xD800 <= c < 0xE000 else "\ue000")
        else:
            parts.append(PIECES[int(rng.integers(len(PIECES)))])
        parts.append(SEPARATORS[int(rng.integers(len(SEPARATORS)))])
    return "".join(parts)


def test_tokenizer_round_trips_arbitrary_utf8():
    """decode(encode(s)) == s for thousands of random mixes of words, specials, bytes and emoji."""
    rng = np.random.default_rng(0)
    for _ in range(4000):
        s = random_text(rng)
        ids = TOK.encode(s)
        assert all(0 <= i < len(TOK) for i in ids)
        assert TOK.decode(ids) == s, (s, ids)


def test_grammar_words_are_single_tokens():
    """A grammar sentence costs one token per word, marker and punctuation mark."""
    ids = TOK.encode("<image> what colour is the circle?")
    assert ids == [TOK.image] + [TOK.stoi[w] for w in ("what", "colour", "is", "the", "circle", "?")]
    assert TOK.decode(ids) == "<image> what colour is the circle?"


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_text_is_in_the_vocabulary(task):
    """Every turn every task writes encodes without byte fallback, and decodes back exactly."""
    for split in splits_of(task):
        for s in samples(task, split, 30):
            for turn in s["conversations"]:
                ids = TOK.encode(turn["value"])
                assert not [i for i in ids if TOK.byte0 <= i < TOK.first_word], (s["id"], turn["value"])
                assert TOK.decode(ids) == turn["value"]


def test_tokenizer_save_load_gives_same_ids(tmp_path):
    """A tokenizer saved to JSON and loaded back has the same vocabulary and gives the same ids."""
    custom = Tokenizer(words=sorted(set(tasks.WORDS) | {"cat", "dog"}))
    for tok in (TOK, custom):
        path = tmp_path / "tok.json"
        tok.save(path)
        json.loads(path.read_text())  # plain JSON
        back = Tokenizer.load(path)
        assert back.itos == tok.itos
        rng = np.random.default_rng(1)
        for s in ["<image> what colour is the cat?", "the dog 😀"] + [random_text(rng) for _ in range(50)]:
            assert back.encode(s) == tok.encode(s)
    assert custom.encode("cat") != TOK.encode("cat")  # the saved words really are used


def test_decode_rejects_out_of_range_ids():
    """Decoding an id outside the vocabulary is a ValueError, not garbage or an IndexError."""
    for bad in (len(TOK), len(TOK) + 100, -1):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            TOK.decode([TOK.bos, bad])


# ----------------------------------------------------------------------------- 5. analyser

def read_back(kind, n, seed, size=world.IMAGE_SIZE):
    """(fraction of n random scenes world.analyse_image reads back exactly, mean PSNR in dB) for
    renders spoilt by world.degrade(kind), or left clean."""
    scenes, spoil = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    hits, db = 0, []
    for _ in range(n):
        scene = world.sample_scene(scenes)
        img = world.render_scene(scene, scenes, size=size)
        seen = img if kind == "clean" else world.degrade(img, spoil, kind)
        hits += world.analyse_image(seen) == scene
        db.append(world.psnr(seen, img))
    return hits / n, float(np.mean(db))


@pytest.mark.parametrize("size", [64, 96])
def test_analyser_reads_every_clean_render(size):
    """world.analyse_image reads back the exact scene of every one of 400 random renders."""
    assert read_back("clean", 400, size, size) == (1.0, float("inf"))


@pytest.mark.parametrize("kind", world.DEGRADATIONS)
def test_analyser_reads_degraded_renders(kind):
    """On renders degraded to about 25 dB PSNR (checked, so the test cannot pass by spoiling less),
    world.analyse_image still reads back the exact scene of >= 95% of 300."""
    frac, db = read_back(kind, 300, 0)
    assert 24 <= db <= 26, db
    assert frac >= 0.95, frac


def test_degrade_and_psnr():
    """degrade returns a new uint8 image of the same shape, reproducibly from the rng, and rejects an
    unknown kind; psnr is inf for identical images and 20 dB for an error of 25.5 everywhere."""
    img = world.render_scene(world.sample_scene(np.random.default_rng(0)), np.random.default_rng(0))
    keep = img.copy()
    for kind in world.DEGRADATIONS:
        a, b = (world.degrade(img, np.random.default_rng(3), kind) for _ in range(2))
        assert a.dtype == np.uint8 and a.shape == img.shape and (a == b).all() and (a != img).any(), kind
    assert (img == keep).all()
    with pytest.raises(ValueError, match="unknown degradation"):
        world.degrade(img, np.random.default_rng(0), "smudge")
    assert world.psnr(img, img) == float("inf")
    assert world.psnr(np.zeros((4, 4, 3)), np.full((4, 4, 3), 25.5)) == pytest.approx(20.0)


# ----------------------------------------------------------------------------- 6. collation

COLLATE = Collator(TOK, MEDIA_TOKENS)


def mixed_batch():
    """Samples of every modality, with prompts, multi-turn documents and media in answers."""
    return ([samples("vqa", "train", 2)[1], samples("interleaved", "train", 3)[2], samples("audio_qa", "val", 1)[0],
             samples("speech", "train", 1)[0], samples("video_qa", "test", 1)[0],
             samples("text_to_image", "train", 1)[0], samples("text", "train", 1)[0]])


def test_collate_exact_sequence_of_a_known_sample():
    """One hand-written sample collates to exactly the documented tokens and targets."""
    img = np.zeros((64, 64, 3), np.uint8)
    s = {"id": "x", "task": "vqa", "conversations": [{"from": "human", "value": "<image> what colour is the circle?"},
                                                     {"from": "gpt", "value": "red"}],
         "media": [{"type": "image", "data": img}]}
    b = COLLATE([s])
    w = TOK.stoi
    seq = ([TOK.bos] + [TOK.image] * 5 + [w[x] for x in ("what", "colour", "is", "the", "circle", "?")]
           + [TOK.sep, w["red"], TOK.eos])
    assert b["tokens"].tolist() == [seq[:-1]]
    assert b["targets"].tolist() == [[IGNORE] * 12 + [w["red"], TOK.eos]]
    assert b["kinds"] == ["vqa"] and b["media"]["image"].shape == (1, 3, 64, 64)


def test_media_targets_and_loss_all():
    """loss="all" puts a target on every token; a modality in media_targets puts the marker id as
    the target on its placeholders where the turn carries loss, and nowhere else."""
    s = samples("text_to_image", "train", 1)[0]  # human: "draw ...", gpt: "<image>"
    prompt = len(TOK.encode(s["conversations"][0]["value"])) + 1  # + <sep>
    seq = [TOK.bos] + TOK.encode(s["conversations"][0]["value"]) + [TOK.sep] + [TOK.image] * 5 + [TOK.eos]
    every = Collator(TOK, MEDIA_TOKENS, media_targets={"image"}, loss="all")([s])
    assert every["tokens"].tolist() == [seq[:-1]] and every["targets"].tolist() == [seq[1:]]
    answers = Collator(TOK, MEDIA_TOKENS, media_targets={"image"})([s])["targets"].tolist()[0]
    assert answers == [IGNORE] * prompt + [TOK.image] * 5 + [TOK.eos]
    assert COLLATE([s])["targets"].tolist()[0] == [IGNORE] * (prompt + 5) + [TOK.eos]
    plain = Collator(TOK, MEDIA_TOKENS, loss="all")([samples("vqa", "train", 1)[0]])
    assert (plain["targets"][plain["tokens"].roll(-1, 1) == TOK.image] == IGNORE).all()  # not a media target
    with pytest.raises(ValueError, match="loss must be one of"):
        Collator(TOK, MEDIA_TOKENS, loss="prompts")


def test_by_length_groups_are_the_batch_sorted_and_padded_apiece():
    """by_length splits a batch into groups of rows sorted by length, each padded to its own longest:
    the same rows (and their media) as one batch, on fewer positions."""
    batch = mixed_batch()
    one, groups = COLLATE(batch), COLLATE.by_length(batch, 3)
    assert len(groups) == 3 and sum(len(g["tasks"]) for g in groups) == len(batch)
    lengths = [int((row != TOK.pad).sum()) for g in groups for row in g["tokens"]]
    assert lengths == sorted(lengths) and all(g["tokens"].size(1) == max(
        int((row != TOK.pad).sum()) for row in g["tokens"]) for g in groups)  # no column of padding only
    assert sum(g["tokens"].numel() for g in groups) < one["tokens"].numel()
    rows = {tuple(r[r != TOK.pad].tolist()) for r in one["tokens"]}
    assert rows == {tuple(r[r != TOK.pad].tolist()) for g in groups for r in g["tokens"]}
    for kind, items in one["media"].items():  # the same media items, each with its own row
        assert sum(g["media"].get(kind, items[:0]).size(0) for g in groups) == items.size(0)
    (single,) = COLLATE.by_length(batch)  # one group: the batch exactly as it comes
    assert single["tokens"].equal(one["tokens"]) and single["targets"].equal(one["targets"])


def test_answer_length_expands_media():
    assert COLLATE.length("<image>") == 5 and COLLATE.length("top left") == 2
    assert COLLATE.length("<video> and") == 4 + 1 and COLLATE.length("<audio>") == 3


def test_markers_expand_to_media_tokens_placeholders():
    """Each marker becomes one contiguous run of exactly media_tokens[modality] placeholders."""
    batch = mixed_batch()
    tokens = COLLATE(batch)["tokens"]
    for row, s in zip(tokens.tolist(), batch):
        expected = Counter(markers_in(text_of(s)))
        for marker, modality in MARKER_IDS.items():
            runs = [len(r) for r in re.findall(r"x+", "".join("x" if t == marker else "." for t in row))]
            assert runs == [MEDIA_TOKENS[modality]] * expected[modality], (s["id"], modality, runs)


def test_targets_cover_only_answers_and_eos():
    """Targets are the next token on gpt tokens and <eos>, and -100 on prompts, placeholders, padding."""
    batch = mixed_batch()
    out = COLLATE(batch)
    for tokens, targets, s in zip(out["tokens"].tolist(), out["targets"].tolist(), batch):
        n = max(i for i, t in enumerate(tokens) if t != TOK.pad) + 1  # unpadded length
        assert tokens[0] == TOK.bos and TOK.pad not in tokens[:n]
        assert all(t == TOK.pad for t in tokens[n:]) and all(t == IGNORE for t in targets[n:])
        for t in range(n - 1):  # shifted by one: a target is the next input token or ignored
            assert targets[t] in (IGNORE, tokens[t + 1]), (s["id"], t)
        assert targets[n - 1] == TOK.eos
        answers = []
        for turn in s["conversations"]:
            if turn["from"] == "gpt":
                answers += [i for i in TOK.encode(turn["value"]) if i not in MARKER_IDS] + [TOK.eos]
        assert [t for t in targets if t != IGNORE] == answers, s["id"]
        if TOK.sep in tokens:  # the first prompt, up to and including its <sep>, carries no loss
            assert all(t == IGNORE for t in targets[:tokens.index(TOK.sep)]), s["id"]


def test_media_packed_in_order_of_appearance():
    """media[m][k] is the k-th item of modality m reading the batch row by row, marker by marker."""
    docs = [s for s in samples("interleaved", "train", 12)]
    batch = [next(s for s in docs if len(s["media"]) == 3), samples("audio_qa", "train", 1)[0],
             next(s for s in docs if len(s["media"]) == 2), samples("audio_qa", "train", 2)[1],
             [s for s in docs if len(s["media"]) == 3][1]]
    media = COLLATE(batch)["media"]
    images = [m["data"] for s in batch for m in s["media"] if m["type"] == "image"]
    audio = [m["data"] for s in batch for m in s["media"] if m["type"] == "audio"]
    assert set(media) == {"image", "audio"} and media["image"].shape == (8, 3, 64, 64)
    for k, img in enumerate(images):
        assert torch.equal(media["image"][k], torch.tensor(img).permute(2, 0, 1).float() / 255), k
    assert media["audio"].shape == (2, len(audio[0])) and all(
        torch.equal(media["audio"][k], torch.from_numpy(a)) for k, a in enumerate(audio))


def test_videos_and_speech_pack_as_their_own_items():
    """Videos stack to (N, F, 3, H, W) and speech to (N, L); each item equals its own conversion
    (the collator converts a whole modality at once)."""
    batch = samples("video_qa", "train", 3) + samples("speech", "train", 2)
    media = COLLATE(batch)["media"]
    assert media["video"].shape == (3, world.VIDEO_FRAMES, 3, world.VIDEO_SIZE, world.VIDEO_SIZE)
    assert media["video"].is_contiguous() and media["video"].dtype == torch.float32
    for k, s in enumerate(batch[:3]):
        frames = torch.tensor(s["media"][0]["data"]).permute(0, 3, 1, 2).float() / 255
        assert torch.equal(media["video"][k], frames) and torch.equal(media_tensor("video", s["media"][0]["data"]), frames)
    assert all(torch.equal(media["speech"][k], torch.from_numpy(s["media"][0]["data"])) for k, s in enumerate(batch[3:]))


def test_marker_media_mismatch_names_the_sample():
    """A sample whose markers do not match its media is a ValueError naming the sample's id."""
    img = {"type": "image", "data": np.zeros((64, 64, 3), np.uint8)}
    wav = {"type": "audio", "data": np.zeros(16000, np.float32)}
    for i, (text, media) in enumerate([("<image> <image> two?", [img]), ("no marker", [img]),
                                       ("<image> wrong type", [wav]), ("<audio> <image>", [img, wav])]):
        s = {"id": f"user/doc-{i}", "task": "x",
             "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "a"}], "media": media}
        with pytest.raises(ValueError, match=f"user/doc-{i}.*do not match"):
            COLLATE([samples("vqa", "train", 1)[0], s])


def test_modality_the_model_does_not_take_raises():
    """Collating a speech sample for an image-only model is a ValueError naming the modality."""
    with pytest.raises(ValueError, match="takes no speech"):
        Collator(TOK, {"image": 5})([samples("vqa", "train", 1)[0], samples("speech", "train", 1)[0]])


def test_prompt_splits_off_the_answer_and_ends_in_sep():
    """Collator.prompt drops the final answer (and its media); the prompt's ids end in <sep>."""
    for s in [samples(t, "train", 1)[0] for t in ("vqa", "interleaved", "audio_qa", "video_qa", "text_to_image")]:
        head, answer = Collator.prompt(s)
        assert answer == s["conversations"][-1]["value"] and head["conversations"] == s["conversations"][:-1]
        ids, loss = COLLATE.encode(head)
        full, _ = COLLATE.encode(s)
        assert ids[-1] == TOK.sep and full[:len(ids)] == ids
        assert head["media"] == s["media"][:len(markers_in(text_of(head)))]
    assert Collator.prompt(samples("text_to_image", "train", 1)[0])[0]["media"] == []  # the image is the answer
    with pytest.raises(ValueError, match="prompt then a final gpt answer"):
        Collator.prompt(next(s for s in samples("text", "train", 20) if len(s["conversations"]) == 1))


# ----------------------------------------------------------------------------- 7. loader

DATASET = Mixture(["vqa", "audio_qa", "text", "interleaved"], length=48)


def ids_of(batch):
    return [s["id"] for s in batch]


def batches(loader):
    return [b for b in loader]


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_together_read_the_single_process_batches(shuffle):
    """Batch b of rank 0 plus batch b of rank 1 is batch b of one process with twice the batch size."""
    single = batches(make_loader(DATASET, ids_of, 8, shuffle=shuffle, seed=3))
    ranks = [batches(make_loader(DATASET, ids_of, 4, rank=r, world_size=2, shuffle=shuffle, seed=3))
             for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 6
    for b, whole in enumerate(single):
        assert not set(ranks[0][b]) & set(ranks[1][b])
        assert sorted(ranks[0][b] + ranks[1][b]) == sorted(whole), b
    assert len({i for batch in single for i in batch}) == 48  # every item once


def test_two_ranks_collate_the_same_rows_as_one_process():
    """With the real collator, the two ranks' unpadded token rows are the single process's rows."""
    def rows(batch):
        return [tuple(t for t in row if t != TOK.pad) for row in batch["tokens"].tolist()]
    single = next(iter(make_loader(DATASET, COLLATE, 8)))
    r0, r1 = (next(iter(make_loader(DATASET, COLLATE, 4, rank=r, world_size=2))) for r in (0, 1))
    assert sorted(rows(r0) + rows(r1)) == sorted(rows(single))


@pytest.mark.parametrize("rank", [0, 1])
def test_start_skips_exactly_k_items_per_rank(rank):
    """start=k resumes after this rank's first k items: its batches are the fresh loader's, shifted."""
    fresh = batches(make_loader(DATASET, ids_of, 4, rank=rank, world_size=2))
    resumed = batches(make_loader(DATASET, ids_of, 4, rank=rank, world_size=2, start=8))
    assert resumed[0] == fresh[2] and resumed == fresh[2:]
    odd = batches(make_loader(DATASET, ids_of, 4, rank=rank, world_size=2, start=6))
    flat = [i for b in fresh for i in b]
    assert [i for b in odd for i in b] == flat[6:6 + 4 * len(odd)] and len(odd) == (len(flat) - 6) // 4


# ----------------------------------------------------------------------------- 7. judges

from data import judges  # noqa: E402


def test_judges_exact_by_default_word_accuracy_for_speech():
    vqa, speech = samples("vqa", "test", 1)[0], {"conversations": [{"from": "gpt", "value": "one two three"}]}
    assert judges.judge("vqa", vqa, judges.truth(vqa), {}) == 1 and judges.judge("vqa", vqa, "nope", {}) == 0
    assert judges.judge("speech", speech, "one two three", {}) == 1
    assert judges.judge("speech", speech, "one two", {}) == pytest.approx(2 / 3)  # a word missing
    assert judges.judge("speech", speech, "one five three", {}) == pytest.approx(2 / 3)  # a word wrong
    assert judges.judge("speech", speech, "", {}) == 0 and judges.judge("speech", speech, "a b c d e f g", {}) == 0
    assert judges.judge_name("speech") == "word accuracy" and judges.judge_name("vqa") == "exact match"


def test_caption_parses_back_into_its_scene():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = world.sample_scene(rng)
        assert judges.scene_of(f"draw {world.describe(scene)}.") == scene


def test_drawn_image_is_judged_against_the_prompts_scene():
    """text_to_image: 1 when the analyser reads the prompt's scene from the one drawn image; 0 for
    another scene, no image, or a reply with text besides the image."""
    s = samples("text_to_image", "test", 3)[2]
    img = torch.from_numpy(s["media"][0]["data"]).permute(2, 0, 1).float()[None] / 255  # the truth's render
    other = torch.from_numpy(samples("text_to_image", "test", 3)[1]["media"][0]["data"]).permute(2, 0, 1)[None] / 255
    assert judges.judge("text_to_image", s, "<image>", {"image": img}) == 1
    assert judges.judge("text_to_image", s, "<image>", {"image": other.float()}) == 0
    assert judges.judge("text_to_image", s, "<image>", {}) == 0
    assert judges.judge("text_to_image", s, "<image> red", {"image": img}) == 0
