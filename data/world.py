"""The visual toy world: scenes of coloured shapes on a 3x3 grid, short videos, and an analyser.

A *scene* is a tuple of objects, each a (cell, colour, shape, size) with the cell 0..8 read row by
row on a 3x3 grid. Each cell holds at most one object, and a scene never repeats a colour or a
shape, so "the red one" and "the circle" always name exactly one object. Rendering adds continuous
variation (exact centre inside the cell) from an rng, so one scene draws as many images.

The *analyser* reads an RGB image back into its scene. It is how the tests check the renderer,
and how Chameleon's generated pictures are judged later: pure pixel rules, no learning. `degrade`
spoils a render as a generator might (blur, noise, colour drift, JPEG), to test the analyser on.

A *motion* is a shape sliding across a small frame in one direction, optionally beside a still
distractor; `render_video` draws it as a few frames.
"""
import io
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 64
VIDEO_SIZE = 32
VIDEO_FRAMES = 4
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 220),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")  # cell index -> name
DIRECTIONS = ("left", "right", "up", "down")
# colour/shape pairs that never occur in train/val/test; the "compose" split always has one.
HELDOUT_PAIRS = {("red", "triangle"), ("green", "square"), ("blue", "circle"),
                 ("yellow", "triangle"), ("purple", "square"), ("white", "circle")}


_COLOUR_NAMES = tuple(COLOURS)


class Obj(NamedTuple):
    cell: int
    colour: str
    shape: str
    size: str


def sample_scene(rng, min_objects=1, max_objects=3):
    """A random scene: objects in distinct cells with distinct colours and distinct shapes."""
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = sorted(rng.choice(9, n, replace=False).tolist())
    # indices, not rng.choice(names): the same draws (choice(k) picks indices either way), ~30% faster
    colours = rng.choice(len(COLOURS), n, replace=False).tolist()
    shapes = rng.choice(len(SHAPES), n, replace=False).tolist()
    sizes = rng.integers(0, len(SIZES), n).tolist()
    return tuple(Obj(c, _COLOUR_NAMES[a], SHAPES[b], SIZES[z]) for c, a, b, z in zip(cells, colours, shapes, sizes))


def is_novel(objects):
    """True if any object is a held-out colour/shape pair (belongs to the compose split only)."""
    return any((o.colour, o.shape) in HELDOUT_PAIRS for o in objects)


def draw_shape(draw, shape, colour, cx, cy, r):
    """Draw one filled shape of 'radius' r centred at (cx, cy) onto a PIL ImageDraw."""
    rgb = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        h = 0.85 * r  # a square of half-side 0.85 r has about the circle's area
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def radius(size, cell):
    """Shape radius in pixels for a size word, given the cell width."""
    return (0.22 if size == "small" else 0.38) * cell


def render_scene(objects, rng, size=IMAGE_SIZE):
    """Draw a scene as a uint8 (size, size, 3) array; each shape stays inside its own cell."""
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for o in objects:
        r = radius(o.size, cell)
        slack = max(cell / 2 - r - 1.5, 0.0)  # how far the centre may move and stay in the cell
        cx = (o.cell % 3 + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (o.cell // 3 + 0.5) * cell + rng.uniform(-slack, slack)
        draw_shape(draw, o.shape, o.colour, cx, cy, r)
    return np.asarray(img)


_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # (K, 3)


def analyse_image(img):
    """Read a (H, W, 3) uint8 image back into a scene: per cell, is there a shape, which colour
    (nearest palette entry), which size (extent) and which shape (how much of its box it fills)."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"analyse_image expects (H, W, 3) RGB, got shape {img.shape}")
    size = img.shape[0]
    edges = np.linspace(0, size, 4).round().astype(int)
    objects = []
    for cell in range(9):
        y0, y1 = edges[cell // 3], edges[cell // 3 + 1]
        x0, x1 = edges[cell % 3], edges[cell % 3 + 1]
        patch = img[y0:y1, x0:x1].astype(np.float32)
        mask = patch.max(axis=2) > 80
        if mask.sum() < max(4, (size / 64) ** 2 * 8):
            continue
        rgb = patch[mask].mean(axis=0)
        colour = list(COLOURS)[int(((_PALETTE - rgb) ** 2).sum(1).argmin())]
        ys, xs = np.nonzero(mask)
        h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
        extent = max(h, w) / (size / 3)  # as a fraction of the cell: ~0.44 small, ~0.76 large
        fill = mask.sum() / (h * w)       # circle ~0.79, square ~1, triangle ~0.5
        shape = "triangle" if fill < 0.65 else "circle" if fill < 0.9 else "square"
        objects.append(Obj(cell, colour, shape, "large" if extent > 0.6 else "small"))
    return tuple(objects)


DEGRADATIONS = ("blur", "noise", "colour", "jpeg", "mixed")


def psnr(a, b):
    """Peak signal-to-noise ratio of two uint8 images in dB (higher: closer; identical: inf)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def degrade(img, rng, kind):
    """A uint8 copy of an (H, W, 3) render spoilt like a generator's output might be, by `kind`, each
    calibrated to a mean PSNR of about 25 dB against the clean render (64x64; mean over 1000 random
    scenes, as `python -m data analyser` measures it):

        blur    Gaussian blur, sigma 1.6 px (scaled with the image size)                   25.2 dB
        noise   additive Gaussian noise, sigma 19.5 per channel                            25.1 dB
        colour  per-channel gain 1 +- 0.1 and offset 0..27, uniform (a few % drift)        25.0 dB
        jpeg    JPEG at quality 8 (PIL's default 4:2:0 chroma subsampling)                 25.4 dB
        mixed   blur sigma 0.8, then gain 1 +- 0.05 and offset 0..12, then noise sigma 10  25.0 dB
    """
    x = np.asarray(img)
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS}")
    scale = x.shape[0] / IMAGE_SIZE

    def blur(a, sigma):
        return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(sigma * scale)))

    def shift(a, gain, offset):
        a = a * (1 + rng.uniform(-gain, gain, 3)) + rng.uniform(0, offset, 3)
        return np.clip(a, 0, 255).round().astype(np.uint8)

    def noise(a, sigma):
        return np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).round().astype(np.uint8)

    if kind == "blur":
        return blur(x, 1.6)
    if kind == "noise":
        return noise(x, 19.5)
    if kind == "colour":
        return shift(x, 0.1, 27)
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "JPEG", quality=8)
        return np.asarray(Image.open(buf).convert("RGB"))
    return noise(shift(blur(x, 0.8), 0.05, 12), 10)


def describe(objects):
    """The caption of a scene: every object with all its attributes, in cell order."""
    return " and ".join(f"a {o.size} {o.colour} {o.shape} at the {POSITIONS[o.cell]}" for o in objects)


class Motion(NamedTuple):
    colour: str
    shape: str
    direction: str
    distractor: tuple  # () or (colour, shape, cell) of a shape that stays still


def sample_motion(rng):
    """A shape that moves in one of four directions, and half the time a still distractor."""
    colours = rng.choice(list(COLOURS), 2, replace=False)
    shapes = rng.choice(SHAPES, 2, replace=False)
    direction = str(rng.choice(DIRECTIONS))
    distractor = ()
    if rng.random() < 0.5:
        distractor = (str(colours[1]), str(shapes[1]), int(rng.choice([0, 2, 6, 8])))
    return Motion(str(colours[0]), str(shapes[0]), direction, distractor)


def render_video(motion, rng, size=VIDEO_SIZE, frames=VIDEO_FRAMES):
    """Draw a motion as uint8 (frames, size, size, 3): the mover travels ~half the frame through
    the middle row/column while the distractor (if any) stays in its corner cell."""
    r = 0.13 * size
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[motion.direction]
    travel = 0.5 * size
    start = np.array([size / 2, size / 2]) - 0.5 * travel * np.array([dx, dy])
    start += rng.uniform(-0.06, 0.06, 2) * size
    out = []
    for f in range(frames):
        img = Image.new("RGB", (size, size))
        draw = ImageDraw.Draw(img)
        if motion.distractor:
            colour, shape, cell = motion.distractor
            draw_shape(draw, shape, colour, (cell % 3 + 0.5) * size / 3, (cell // 3 + 0.5) * size / 3, r)
        cx, cy = start + travel * f / (frames - 1) * np.array([dx, dy])
        draw_shape(draw, motion.shape, motion.colour, cx, cy, r)
        out.append(np.asarray(img))
    return np.stack(out)
