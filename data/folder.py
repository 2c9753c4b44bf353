"""Datasets on disk: JSONL records (or LLaVA's own JSON array) plus media files.

    DIR/data.jsonl     one record per line:
        {"id": "vqa/train/0", "task": "vqa", "kind": "colour",
         "conversations": [{"from": "human", "value": "<image> what colour is the circle?"},
                           {"from": "gpt", "value": "red"}],
         "media": [{"type": "image", "path": "images/0.png"}]}
    DIR/images/0.png   any size or mode (EXIF orientation applied); read as RGB, resized to image_size
    DIR/videos/0.png   the frames side by side in one strip; the media entry says "frames": F
    DIR/audio/0.wav    PCM wav, any rate or channel count; read as mono at sound.SAMPLE_RATE
    DIR/speech/0.wav   and padded or trimmed to the clip length of its modality

LLaVA's shorthand for one image, {"image": "coco/0001.jpg", "conversations": [...]}, is read too,
and so is LLaVA's file as it is: a JSON array of such records (llava_instruct_150k.json) beside, or
with `image_folder` pointing at, its images. "task" defaults to the file's name, "kind" to the
task and "id" to "<name>/<line or record>". `write_folder` writes the toy world in this format and
`Folder` reads it back into samples exactly as data.tasks makes them, so the same Collator and
training loop run on the toy world and on user data alike.
"""
import json
import os
import re
import wave

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from . import sound, world
from .errors import UserError
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
    A single image is one frame; a video is a strip of them. EXIF orientation is applied, so a
    photo taken sideways is read upright."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    if w % frames:
        raise ValueError(f"its width {w} is not a multiple of its {frames} frames")
    step = w // frames
    return np.stack([fit(im.crop((f * step, 0, (f + 1) * step, h)), size) for f in range(frames)])


def read_records(file):
    """[(where, record)] of a JSONL file (one record a line) or a JSON array (LLaVA's own format,
    e.g. llava_instruct_150k.json), and the problems found, each as (where, id, problem)."""
    with open(file, "rb") as f:
        raw = f.read()
    if file.endswith(".json"):
        try:
            records = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            return [], [(f"byte {e.start}", None, "not UTF-8 text; save the file as UTF-8")]
        except json.JSONDecodeError as e:
            return [], [(f"line {e.lineno}", None, f"not valid JSON ({e.msg} at column {e.colno})")]
        if not isinstance(records, list):
            return [], [("the file", None, "a .json dataset must be a JSON array of records, as LLaVA's")]
        return [(f"record {k}", r) for k, r in enumerate(records)], []
    found, bad = [], []
    for line_no, line in enumerate(raw.split(b"\n"), 1):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.append((f"line {line_no}", None, f"not UTF-8 text (byte {e.start}); save the file as UTF-8"))
            continue
        if not line.strip():
            continue
        try:
            found.append((f"line {line_no}", json.loads(line)))
        except json.JSONDecodeError as e:
            bad.append((f"line {line_no}", None, f"not valid JSON ({e.msg} at column {e.colno}); "
                                                 f"write one JSON object per line"))
    return found, bad


def readable(path, kind):
    """None if a media file decodes, else why not. Images are decoded at reduced size (fast), so a
    truncated or corrupt file is caught here rather than mid-run."""
    try:
        if kind in ("image", "video"):
            with Image.open(path) as im:
                im.draft("RGB", (64, 64))  # JPEG: decode at 1/8 size at most
                im.load()
        else:
            with wave.open(path, "rb") as f:
                f.readframes(f.getnframes())
    except (OSError, ValueError, EOFError, wave.Error, SyntaxError) as e:
        return f"{e} ({'an image Pillow reads' if kind in ('image', 'video') else 'a PCM wav'} is needed)"
    return None


class Folder(Dataset):
    """The samples of a dataset: a folder holding data.jsonl, or a .jsonl / .json file itself
    (media paths are relative to its folder, or to `image_folder`, LLaVA's --image_folder). Every
    record is checked when it is opened, media decoded included, and every bad one is reported in
    one error with its file, line and id; media are loaded on access."""

    def __init__(self, path, image_size=world.IMAGE_SIZE, image_folder=None):
        path = os.path.normpath(path)
        self.file = path if os.path.isfile(path) else os.path.join(path, "data.jsonl")
        self.path = image_folder or os.path.dirname(self.file)
        self.name, self.image_size = os.path.splitext(os.path.basename(path))[0], image_size
        if not os.path.isfile(self.file):
            raise UserError(f"{self.file} does not exist: give a dataset folder holding data.jsonl (one JSON record "
                            f"per line), or a .jsonl or .json file (if write_folder was interrupted, run it again)")
        found, bad = read_records(self.file)
        self.records = []
        for where, r in found:
            problem, rid, sample = self.check(r, where)
            if problem:
                bad.append((where, rid, problem))
            else:
                self.records.append((where, sample))
        if bad:
            listed = "\n".join(f"  {w}{'' if rid is None else f' (id {rid!r})'}: {p}" for w, rid, p in bad[:20])
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise UserError(f"{self.file}: {len(bad)} bad record{'s' * (len(bad) > 1)}\n{listed}{more}")
        if not self.records:
            raise UserError(f"{self.file} holds no records: write one JSON object per line")

    def check(self, r, where):
        """(problem or None, id, sample without media data) of one record."""
        if not isinstance(r, dict):
            return "a record must be a JSON object", None, None
        rid = str(r["id"]) if "id" in r else f"{self.name}/{where.split()[-1]}"
        convs = r.get("conversations")
        if not isinstance(convs, list) or not convs:
            return 'missing "conversations": give a non-empty list of {"from", "value"} turns', rid, None
        for t in convs:
            if not (isinstance(t, dict) and t.get("from") in ("human", "gpt") and isinstance(t.get("value"), str)):
                return f'bad turn {t!r}: each turn needs "from" ("human" or "gpt") and a string "value"', rid, None
        if "image" in r and "media" in r:
            return 'give either "image" (one image path) or a "media" list, not both', rid, None
        media = [{"type": "image", "path": r["image"]}] if "image" in r else r.get("media", [])
        if not isinstance(media, list):
            return '"media" must be a list of {"type", "path"} entries', rid, None
        for m in media:
            if not (isinstance(m, dict) and isinstance(m.get("path"), str) and "type" in m):
                return f'bad media entry {m!r}: it needs a "type" and a string "path"', rid, None
            if m["type"] not in MEDIA:
                return f"unknown media type {m['type']!r}; expected one of {MEDIA}", rid, None
            file = os.path.join(self.path, m["path"])
            if not os.path.isfile(file):
                return f"media file {m['path']!r} not found (paths are relative to {self.path})", rid, None
            if m["type"] == "video" and not (isinstance(m.get("frames"), int) and m["frames"] > 0):
                return f'video {m["path"]!r} needs "frames": the number of frames in its strip', rid, None
            why = readable(file, m["type"])
            if why:
                return f"cannot read {m['type']} {m['path']!r}: {why}", rid, None
        markers = [k for t in convs for k in MARKER.findall(t["value"])]
        types = [m["type"] for m in media]
        if markers != types:
            return (f"the text's media markers {markers} do not match its media {types}; write one <type> "
                    f"marker per media item, in order"), rid, None
        task = r.get("task", self.name)
        return None, rid, {"id": rid, "task": task, "kind": r.get("kind", task), "conversations": convs, "media": media}

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        where, s = self.records[i]
        return {**s, "media": [{"type": m["type"], "data": self.load(m, where, s["id"])} for m in s["media"]]}

    def load(self, m, where, rid):
        path = os.path.join(self.path, m["path"])
        try:
            if m["type"] == "image":
                return read_frames(path, 1, self.image_size)[0]
            if m["type"] == "video":
                return read_frames(path, m["frames"], world.VIDEO_SIZE)
            return read_wav(path, m["type"])
        except (OSError, ValueError, EOFError, wave.Error) as e:  # changed on disk since it was checked
            raise UserError(f"{self.file} {where} (id {rid!r}): cannot read {m['type']} {m['path']!r} ({e})")
