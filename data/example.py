"""A small "bring your own data" example: LLaVA's own file format with captions in plain English.

    python -m data example --out mydata [--n 64]

writes mydata/llava.json, a JSON array of records exactly as llava_instruct_150k.json holds them
({"id", "image", "conversations": [human, gpt]}), and the JPEG images beside it in mydata/images/.
Each caption describes a toy scene the way a person might: synonyms ("little", "box", "crimson"),
several sentence forms and words the toy tokenizer has never seen ("picture", "corner"). So a run
on it meets what real data brings: a fitted vocabulary, longer answers and more than one right way
to say a thing. Each record also says "task": "caption", which picks its judge (data/judges.py:
word accuracy); without it, a record's task is the file's name and its judge exact match.
"""
import json
import os

import numpy as np
from PIL import Image

from . import world

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
COLOUR_WORDS = {"red": ("red", "crimson"), "green": ("green",), "blue": ("blue",), "yellow": ("yellow",),
                "purple": ("purple", "violet"), "white": ("white",)}
SHAPE_WORDS = {"circle": ("circle", "disc"), "square": ("square", "box"), "triangle": ("triangle",)}
PLACES = {"top left": "in the top left corner", "top": "near the top", "top right": "in the top right corner",
          "left": "on the left side", "center": "in the middle", "right": "on the right side",
          "bottom left": "in the bottom left corner", "bottom": "near the bottom",
          "bottom right": "in the bottom right corner"}
ASKS = ("Describe this picture.", "What do you see in the image?", "Give a short description of the image.",
        "What is shown here?")
OPENINGS = ("The picture shows {}.", "In this image there is {}.", "I can see {} on a plain background.",
            "This is a simple drawing of {}.")


def phrase(obj, rng):
    """One object in words, e.g. "a little crimson disc in the top left corner"."""
    pick = lambda words: words[int(rng.integers(len(words)))]
    return (f"a {pick(SIZE_WORDS[obj.size])} {pick(COLOUR_WORDS[obj.colour])} {pick(SHAPE_WORDS[obj.shape])} "
            f"{PLACES[world.POSITIONS[obj.cell]]}")


def caption(scene, rng):
    parts = [phrase(o, rng) for o in scene]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return OPENINGS[int(rng.integers(len(OPENINGS)))].format(listed)


def write_example(path, n=64, seed=0):
    """Write n records and their images under path; returns the JSON file's path."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(path, "images"), exist_ok=True)
    records = []
    for i in range(n):
        scene = world.sample_scene(rng)
        name = f"images/{i:06d}.jpg"
        Image.fromarray(world.render_scene(scene, rng)).save(os.path.join(path, name), quality=90)
        ask = ASKS[int(rng.integers(len(ASKS)))]
        records.append({"id": f"{i:06d}", "image": name, "task": "caption",
                        "conversations": [{"from": "human", "value": f"<image>\n{ask}"},
                                          {"from": "gpt", "value": caption(scene, rng)}]})
    file = os.path.join(path, "llava.json")
    with open(file, "w") as f:
        json.dump(records, f, indent=1)
    return file
