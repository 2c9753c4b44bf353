"""Datasets on disk: a folder of JSONL records plus media files, LLaVA-style.

    DIR/data.jsonl     one record per line:
        {"id": "vqa/train/0", "task": "vqa", "kind": "colour",
         "conversations": [{"from": "human", "value": "<image> what colour is the circle?"},
                           {"from": "gpt", "value": "red"}],
         "media": [{"type": "image", "path": "images/0.png"}]}
    DIR/images/0.png   any size or mode; read as RGB and resized to image_size x image_size
    DIR/videos/0.png   the frames side by side in one strip; the media entry says "frames": F
    DIR/audio/0.wav    PCM wav, any rate or channel count; read as mono at sound.SAMPLE_RATE
    DIR/speech/0.wav   and padded or trimmed to the clip length of its modality

LLaVA's own shorthand for one image, {"image": "coco/0001.jpg", "conversations": [...]}, is read
too; "task" defaults to the folder's name, "kind" to the task and "id" to "<folder>/<line>".
`write_folder` writes the toy world in this format and `Folder` reads it back into samples exactly
as data.tasks makes them, so the same Collator and training loop run on the toy world and on user
data alike.
"""
import json
import os
import re
import wave

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from . import sound, world
from .tasks import get_sample
from .tokenizer import MEDIA

DIRS = {"image": "images", "video": "videos", "audio": "audio", "speech": "speech"}
CLIP_LENGTH = {"audio": int(sound.SAMPLE_RATE * sound.AUDIO_SECONDS),
               "speech": int(sound.SAMPLE_RATE * sound.SPEECH_SECONDS)}
MARKER = re.compile(rf"<({'|'.join(MEDIA)})>")

# ----------------------------------------------------------------------------- writing


def write_wav(path, x):
    """Save a float waveform in [-1, 1] as 16-bit PCM mono at sound.SAMPLE_RATE."""
    pcm = np.clip(np.round(np.asarray(x) * 32768), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sound.SAMPLE_RATE)
        f.writeframes(pcm.tobytes())


def write_folder(path, task, split, n, seed=0):
    """Write samples 0..n-1 of a toy task to a dataset folder; returns the path. The media files
    go first and data.jsonl last (via a temporary file), so a folder without data.jsonl was
    interrupted. Item j of sample i is named <i>.<ext> if it is the sample's only item, else
    <i>_<j>.<ext>."""
    os.makedirs(path, exist_ok=True)
    lines = []
    for i in range(n):
        s = get_sample(task, split, i, seed)
        media = []
        for j, m in enumerate(s["media"]):
            name = str(i) if len(s["media"]) == 1 else f"{i}_{j}"
            ext = "png" if m["type"] in ("image", "video") else "wav"
            entry = {"type": m["type"], "path": f"{DIRS[m['type']]}/{name}.{ext}"}
            file = os.path.join(path, entry["path"])
            os.makedirs(os.path.dirname(file), exist_ok=True)
            if m["type"] == "image":
                Image.fromarray(m["data"]).save(file)
            elif m["type"] == "video":
                Image.fromarray(np.concatenate(list(m["data"]), axis=1)).save(file)
                entry["frames"] = len(m["data"])
            else:
                write_wav(file, m["data"])
            media.append(entry)
        record = {k: s[k] for k in ("id", "task", "kind", "conversations")}
        lines.append(json.dumps({**record, "media": media}) + "\n")
    tmp = os.path.join(path, "data.jsonl.tmp")
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, os.path.join(path, "data.jsonl"))
    return path

# ----------------------------------------------------------------------------- reading


def read_wav(path, kind):
    """A PCM wav (8/16/24/32-bit, any rate, any channels) as float32 mono of the clip length."""
    with wave.open(path, "rb") as f:
        channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
        raw = np.frombuffer(f.readframes(f.getnframes()), np.uint8).reshape(-1, width)
    if width == 1:
        raw = raw ^ 0x80  # 8-bit wav is unsigned
    wide = np.zeros((len(raw), 4), np.uint8)
    wide[:, 4 - width:] = raw  # little-endian: the sample becomes the top bytes of an int32
    x = wide.view("<i4")[:, 0].reshape(-1, channels).mean(axis=1) / 2**31
    if rate != sound.SAMPLE_RATE:
        t = np.arange(round(len(x) * sound.SAMPLE_RATE / rate)) * rate / sound.SAMPLE_RATE
        x = np.interp(t, np.arange(len(x)), x)
    n = CLIP_LENGTH[kind]
    return np.pad(x[:n], (0, max(n - len(x), 0))).astype(np.float32)


def fit(im, size):
    """An RGB PIL image as uint8 (size, size, 3), resized (bilinear) if needed."""
    return np.asarray(im if im.size == (size, size) else im.resize((size, size), Image.BILINEAR))


def read_frames(path, frames, size):
    """An image file cut into `frames` equal pieces side by side: uint8 (frames, size, size, 3).
    A single image is one frame; a video is a strip of them."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    if w % frames:
        raise ValueError(f"its width {w} is not a multiple of its {frames} frames")
    step = w // frames
    return np.stack([fit(im.crop((f * step, 0, (f + 1) * step, h)), size) for f in range(frames)])


class Folder(Dataset):
    """The samples of a dataset folder (see the module docstring). Every record is checked when
    the folder is opened; media are loaded on access."""

    def __init__(self, path, image_size=world.IMAGE_SIZE):
        self.path, self.image_size = path, image_size
        self.name = os.path.basename(os.path.normpath(path))
        self.file = os.path.join(path, "data.jsonl")
        if not os.path.isfile(self.file):
            raise ValueError(f"{self.file} does not exist: a dataset folder needs one JSON record per line "
                             f"in data.jsonl (if write_folder was interrupted, run it again)")
        self.records = []
        with open(self.file, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    self.records.append(self.check(line, line_no))

    def fail(self, line_no, rid, problem):
        record = f"line {line_no}" if rid is None else f"line {line_no} (id {rid!r})"
        raise ValueError(f"{self.file} {record}: {problem}")

    def check(self, line, line_no):
        """Parse and validate one record; returns (line_no, sample without media data)."""
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            self.fail(line_no, None, f"not valid JSON ({e.msg} at column {e.colno}); "
                                     f"write one JSON object per line")
        if not isinstance(r, dict):
            self.fail(line_no, None, "a record must be a JSON object")
        rid = str(r["id"]) if "id" in r else f"{self.name}/{line_no}"
        convs = r.get("conversations")
        if not isinstance(convs, list) or not convs:
            self.fail(line_no, rid, 'missing "conversations": give a non-empty list of {"from", "value"} turns')
        for t in convs:
            if not (isinstance(t, dict) and t.get("from") in ("human", "gpt") and isinstance(t.get("value"), str)):
                self.fail(line_no, rid, f'bad turn {t!r}: each turn needs "from" ("human" or "gpt") and '
                                        f'a string "value"')
        if "image" in r and "media" in r:
            self.fail(line_no, rid, 'give either "image" (one image path) or a "media" list, not both')
        media = [{"type": "image", "path": r["image"]}] if "image" in r else r.get("media", [])
        if not isinstance(media, list):
            self.fail(line_no, rid, '"media" must be a list of {"type", "path"} entries')
        for m in media:
            if not (isinstance(m, dict) and isinstance(m.get("path"), str) and "type" in m):
                self.fail(line_no, rid, f'bad media entry {m!r}: it needs a "type" and a string "path"')
            if m["type"] not in MEDIA:
                self.fail(line_no, rid, f"unknown media type {m['type']!r}; expected one of {MEDIA}")
            if not os.path.isfile(os.path.join(self.path, m["path"])):
                self.fail(line_no, rid, f"media file {m['path']!r} not found (paths are relative to {self.path})")
            if m["type"] == "video" and not (isinstance(m.get("frames"), int) and m["frames"] > 0):
                self.fail(line_no, rid, f'video {m["path"]!r} needs "frames": the number of frames in its strip')
        markers = [k for t in convs for k in MARKER.findall(t["value"])]
        types = [m["type"] for m in media]
        if markers != types:
            self.fail(line_no, rid, f"the text's media markers {markers} do not match its media {types}; "
                                    f"write one <type> marker per media item, in order")
        task = r.get("task", self.name)
        return line_no, {"id": rid, "task": task, "kind": r.get("kind", task), "conversations": convs,
                         "media": media}

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        line_no, s = self.records[i]
        return {**s, "media": [{"type": m["type"], "data": self.load(m, line_no, s["id"])} for m in s["media"]]}

    def load(self, m, line_no, rid):
        path = os.path.join(self.path, m["path"])
        try:
            if m["type"] == "image":
                return read_frames(path, 1, self.image_size)[0]
            if m["type"] == "video":
                return read_frames(path, m["frames"], world.VIDEO_SIZE)
            return read_wav(path, m["type"])
        except (OSError, ValueError, EOFError, wave.Error) as e:
            fmt = "an image Pillow reads" if m["type"] in ("image", "video") else "a PCM wav"
            self.fail(line_no, rid, f"cannot read {m['type']} {m['path']!r} ({e}); it must be {fmt}")
