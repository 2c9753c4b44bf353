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
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # brightness as JPEG sees it: its sharpest channel


def _grow(mask, steps=1):
    """A boolean mask dilated by `steps` pixels (4-neighbourhood)."""
    for _ in range(steps):
        m = mask.copy()
        m[1:] |= mask[:-1]
        m[:-1] |= mask[1:]
        m[:, 1:] |= mask[:, :-1]
        m[:, :-1] |= mask[:, 1:]
        mask = m
    return mask


def _blob(mask, seed):
    """The 4-connected part of a boolean mask that touches the pixels of `seed`."""
    blob = seed & mask
    while True:
        grown = _grow(blob) & mask
        if (grown == blob).all():
            return blob
        blob = grown


def _centre_spread(w):
    """The centre (y, x) of a non-negative weight image, in draw_shape's pixel coordinates, and the
    mean squared distance from it: a blur of sigma adds 2 sigma^2 to that spread, whatever the shape."""
    ys, xs = np.indices(w.shape) + 0.5
    cy, cx = (w * ys).sum() / w.sum(), (w * xs).sum() / w.sum()
    return cy, cx, (w * ((ys - cy) ** 2 + (xs - cx) ** 2)).sum() / w.sum()


def _template(shape, r, cy, cx, spread, hw):
    """A shape of radius r drawn by draw_shape on a black (h, w) patch with its centroid at (cy, cx),
    then blurred until it is spread out as much as `spread` (see _centre_spread)."""
    if shape == "triangle":
        cy -= 0.2 * r  # draw_shape's centre of a triangle lies 0.2 r above the triangle's centroid
    img = Image.new("RGB", hw[::-1])
    draw_shape(ImageDraw.Draw(img), shape, "white", cx, cy, r)
    sigma = np.sqrt(max(spread - _centre_spread(np.asarray(img, np.float32)[..., 0])[2], 0) / 2)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(float(sigma))), np.float32)[..., 0]


def analyse_image(img):
    """Read a (H, W, 3) uint8 image back into a scene. Pixel rules only, made to survive the artefacts
    of a generator (blur, noise, colour drift, JPEG-like blocks; see `degrade`). Per cell of the grid:

    - is there a shape: its brightness (luma above the background), averaged over 3x3 pixels to
      quiet noise, peaks above 55 (the dimmest palette colour, blue, has luma 95);
    - its pixels: the connected blob brighter than half that peak, i.e. half the shape's own
      brightness, which cuts a blurred edge where the sharp edge was;
    - colour: the palette entry nearest the blob's summed colour (over the blob and a rim, where
      blur pushes some of it) divided by the blob's area;
    - shape and size: which of the six shapes draw_shape can draw, centred where the blob is and
      blurred as much as it is, correlates best with the blob and its blurred surroundings.
    """
    x = np.asarray(img)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"analyse_image expects (H, W, 3) RGB, got shape {x.shape}")
    x = x.astype(np.float32)
    x -= np.median(x.reshape(-1, 3), axis=0)  # the background colour: over 80% of any scene's pixels
    luma = x @ _LUMA
    h, w = luma.shape
    pad = np.pad(luma, 1, mode="edge")
    smooth = sum(pad[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    edges = np.linspace(0, h, 4).round().astype(int)
    cell_px = h / 3
    rim, reach = round(cell_px / 8), round(cell_px / 4)  # how far out blur may carry a shape's colour; its light
    objects = []
    for cell in range(9):
        rows = slice(edges[cell // 3], edges[cell // 3 + 1])
        cols = slice(edges[cell % 3], edges[cell % 3 + 1])
        s = smooth[rows, cols]
        peak = s.max()
        r, c = np.unravel_index(s.argmax(), s.shape)
        if peak < 55 or r in (0, s.shape[0] - 1) or c in (0, s.shape[1] - 1):
            continue  # too dim, or brightest on the cell's edge: light blurred over from a neighbour
        blob = _blob(s > peak / 2, s == peak)
        if blob.sum() < (h / 64) ** 2 * 8:  # a fifth of the smallest shape: a speck, not a shape
            continue
        rgb = x[rows, cols][_grow(blob, rim)].sum(0) / blob.sum()
        colour = _COLOUR_NAMES[int(((_PALETTE - rgb) ** 2).sum(1).argmin())]
        near = np.where(_grow(blob, reach), np.maximum(luma[rows, cols], 0), 0)
        cy, cx, spread = _centre_spread(near)

        def likeness(shape, size):  # correlation of the blob with the unit-norm template
            t = _template(shape, radius(size, cell_px), cy, cx, spread, near.shape)
            return (near * t).sum() / np.sqrt((t * t).sum())

        shape, size = max(((sh, sz) for sh in SHAPES for sz in SIZES), key=lambda k: likeness(*k))
        objects.append(Obj(cell, colour, shape, size))
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
