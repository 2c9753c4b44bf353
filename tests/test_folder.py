"""Tests for data/folder.py (dataset folders on disk) and the `python -m data` command."""
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import Collator, Tokenizer
from data.folder import CLIP_LENGTH, Folder, write_folder
from data.sound import SAMPLE_RATE
from data.tasks import TASKS, get_sample

ROOT = Path(__file__).resolve().parents[1]


def write_records(folder, records):
    """A data.jsonl of the given records (dicts, or raw strings written as they are)."""
    folder.mkdir(exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def qa(question, answer):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.mark.parametrize("task", list(TASKS))
def test_round_trip_is_exact(tmp_path, task):
    data = Folder(write_folder(tmp_path / task, task, "train", 3, seed=1))
    assert len(data) == 3
    for i in range(3):
        got, want = data[i], get_sample(task, "train", i, seed=1)
        assert {k: got[k] for k in want if k != "media"} == {k: want[k] for k in want if k != "media"}
        assert [m["type"] for m in got["media"]] == [m["type"] for m in want["media"]]
        for g, w in zip(got["media"], want["media"]):
            assert g["data"].dtype == w["data"].dtype and g["data"].shape == w["data"].shape
            if g["type"] in ("image", "video"):
                np.testing.assert_array_equal(g["data"], w["data"])  # PNG is lossless
            else:
                np.testing.assert_allclose(g["data"], w["data"], rtol=0, atol=1 / 32767)


def test_llava_shorthand_resizes_and_collates(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 50, 4), dtype=np.uint8), "RGBA").save(tmp_path / "odd.png")
    Image.fromarray(rng.integers(0, 256, (90, 71), dtype=np.uint8), "L").save(tmp_path / "grey.jpg")
    write_records(tmp_path, [
        {"id": "a", "image": "odd.png", "conversations": qa("<image> what colour is the circle?", "red")},
        {"image": "grey.jpg", "conversations": qa("what shape is it? <image>", "square")},
    ])
    data = Folder(tmp_path)
    first, second = data[0], data[1]
    assert second["id"] == f"{tmp_path.name}/2" and second["task"] == second["kind"] == tmp_path.name
    for s in (first, second):
        image = s["media"][0]["data"]
        assert s["media"][0]["type"] == "image" and image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert Folder(tmp_path, image_size=32)[0]["media"][0]["data"].shape == (32, 32, 3)
    batch = Collator(Tokenizer(), {"image": 4})([first, second])
    assert batch["media"]["image"].shape == (2, 3, 64, 64)
    assert batch["tokens"].shape == batch["targets"].shape and batch["tokens"].shape[0] == 2


def test_wav_is_mono_resampled_and_fit_to_length(tmp_path):
    rate, seconds = 8000, 0.5
    t = np.arange(int(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * 100 * t)
    stereo = np.stack([left, left], axis=1)  # both channels equal, so the mono mix is `left`
    with wave.open(str(tmp_path / "clip.wav"), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.round(stereo * 32767).astype("<i2").tobytes())
    write_records(tmp_path, [{"conversations": qa("<audio> how many beeps are there?", "one"),
                              "media": [{"type": "audio", "path": "clip.wav"}]}])
    x = Folder(tmp_path)[0]["media"][0]["data"]
    assert x.dtype == np.float32 and x.shape == (CLIP_LENGTH["audio"],)
    n = int(SAMPLE_RATE * seconds)
    expected = 0.5 * np.sin(2 * np.pi * 100 * np.arange(n) / SAMPLE_RATE)
    np.testing.assert_allclose(x[:n - 2], expected[:n - 2], atol=2e-3)  # the last samples hold the end
    assert not x[n:].any()  # padded with silence


GOOD = {"id": "good", "conversations": qa("<image> what colour is it?", "red"),
        "media": [{"type": "image", "path": "images/0.png"}]}
BAD = {
    "bad JSON": ('{"id": "bad", "conversations": [', "not valid JSON"),
    "missing file": ({**GOOD, "id": "bad", "media": [{"type": "image", "path": "images/nope.png"}]},
                     "not found"),
    "marker mismatch": ({**GOOD, "id": "bad", "conversations": qa("<image> <image> which?", "red")},
                        "do not match"),
    "unknown type": ({**GOOD, "id": "bad", "media": [{"type": "smell", "path": "images/0.png"}]},
                     "unknown media type"),
    "missing conversations": ({"id": "bad", "media": []}, "conversations"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_record_names_line_and_id(tmp_path, case):
    record, problem = BAD[case]
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "images/0.png")
    write_records(tmp_path, [GOOD, record])
    with pytest.raises(ValueError, match=problem) as e:
        Folder(tmp_path)
    assert "data.jsonl line 2" in str(e.value)
    if case != "bad JSON":
        assert "'bad'" in str(e.value)


def test_unreadable_image_and_unfinished_folder(tmp_path):
    with pytest.raises(ValueError, match="data.jsonl does not exist"):
        Folder(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images/0.png").write_bytes(b"not a png")
    data = Folder(write_records(tmp_path, [GOOD]))
    with pytest.raises(ValueError, match=r"line 1 \(id 'good'\): cannot read image"):
        data[0]


def test_command_line(tmp_path):
    sheet = tmp_path / "sheet.png"
    subprocess.run([sys.executable, "-m", "data", "--out", str(sheet)], cwd=ROOT, check=True)
    with Image.open(sheet) as im:
        assert im.format == "PNG" and min(im.size) > 500
    folder = tmp_path / "vqa"
    subprocess.run([sys.executable, "-m", "data", "write", "--task", "vqa", "--n", "2", "--out", str(folder)],
                   cwd=ROOT, check=True)
    assert len(Folder(folder)) == 2
