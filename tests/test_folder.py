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
from data.errors import UserError
from data.example import write_example
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
def test_bad_record_names_file_line_and_id(tmp_path, case):
    record, problem = BAD[case]
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "images/0.png")
    write_records(tmp_path, [GOOD, record])
    with pytest.raises(UserError, match=problem) as e:
        Folder(tmp_path)
    assert "data.jsonl: 1 bad record" in str(e.value) and "line 2" in str(e.value)
    if case != "bad JSON":
        assert "'bad'" in str(e.value)


def test_every_bad_record_is_named_up_front(tmp_path):
    """Three bad records among good ones (a corrupt image, a non-UTF-8 line, a marker mismatch) are
    all reported, with their lines, when the folder is opened, not one at a time mid-run."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "images/0.png")
    (tmp_path / "images/broken.png").write_bytes((tmp_path / "images/0.png").read_bytes()[:60])  # truncated
    lines = [json.dumps(GOOD), json.dumps({**GOOD, "id": "cut", "media": [{"type": "image", "path": "images/broken.png"}]}),
             json.dumps(GOOD), json.dumps({**GOOD, "id": "two", "conversations": qa("<image> <image>", "x")})]
    (tmp_path / "data.jsonl").write_bytes(("\n".join(lines[:3]) + "\n").encode() + b'{"id": "caf\xe9"}\n'
                                          + (lines[3] + "\n").encode())
    with pytest.raises(UserError) as e:
        Folder(tmp_path)
    msg = str(e.value)
    assert "3 bad records" in msg and "line 2 (id 'cut'): cannot read image" in msg
    assert "line 4: not UTF-8 text" in msg and "line 5 (id 'two')" in msg


def test_empty_and_missing_data_files(tmp_path):
    with pytest.raises(UserError, match="data.jsonl does not exist"):
        Folder(tmp_path)
    (tmp_path / "data.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="holds no records"):
        Folder(tmp_path)


def test_llava_json_array_is_read_as_is(tmp_path):
    """LLaVA's own file: a JSON array of {"id", "image", "conversations"} with the images in another
    folder (LLaVA's --image_folder)."""
    (tmp_path / "coco").mkdir()
    Image.new("RGB", (80, 60), "red").save(tmp_path / "coco/000001.jpg")
    records = [{"id": "000001", "image": "000001.jpg",
                "conversations": qa("<image>\nWhat colour is the bus?", "The bus is red.")}] * 3
    (tmp_path / "llava_instruct.json").write_text(json.dumps(records))
    data = Folder(tmp_path / "llava_instruct.json", image_folder=str(tmp_path / "coco"))
    assert len(data) == 3 and data.name == "llava_instruct" and data[2]["id"] == "000001"
    assert data[0]["media"][0]["data"].shape == (64, 64, 3) and data[0]["media"][0]["data"][0, 0, 0] > 200
    (tmp_path / "bad.json").write_text('{"id": 1}')
    with pytest.raises(UserError, match="must be a JSON array"):
        Folder(tmp_path / "bad.json")


def test_example_is_a_llava_file_of_plain_english_captions(tmp_path):
    """python -m data example writes LLaVA's JSON array (judged as captions) that Folder reads as is;
    its words are mostly new to the toy tokenizer, and a fitted one spells none of them in bytes."""
    file = write_example(str(tmp_path / "mydata"), n=12)
    records = json.loads(Path(file).read_text())
    assert len(records) == 12 and set(records[0]) == {"id", "image", "task", "conversations"}
    data = Folder(file)
    assert len(data) == 12 and data[0]["task"] == "caption" and data[0]["media"][0]["data"].shape == (64, 64, 3)
    answers = [s["conversations"][-1]["value"] for s in data]
    fitted = Tokenizer().fit([t["value"] for s in data for t in s["conversations"]], 1)
    assert all(len(fitted.encode(a)) < len(Tokenizer().encode(a)) / 2 for a in answers)
    assert all(fitted.decode(fitted.encode(a)) == a for a in answers)


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored sideways with an EXIF 'rotate 90' tag is read upright."""
    im = Image.new("RGB", (64, 32), "black")
    im.paste((255, 0, 0), (0, 0, 32, 32))  # red on the left half of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    im.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    write_records(tmp_path, [{"image": "photo.jpg", "conversations": qa("<image> where?", "top")}])
    pixels = Folder(tmp_path)[0]["media"][0]["data"]
    assert pixels[:16, :, 0].mean() > 200 and pixels[-16:, :, 0].mean() < 60  # red now on top


def test_command_line(tmp_path):
    sheet = tmp_path / "sheet.png"
    subprocess.run([sys.executable, "-m", "data", "--out", str(sheet)], cwd=ROOT, check=True)
    with Image.open(sheet) as im:
        assert im.format == "PNG" and min(im.size) > 500
    folder = tmp_path / "vqa"
    subprocess.run([sys.executable, "-m", "data", "write", "--task", "vqa", "--n", "2", "--out", str(folder)],
                   cwd=ROOT, check=True)
    assert len(Folder(folder)) == 2
