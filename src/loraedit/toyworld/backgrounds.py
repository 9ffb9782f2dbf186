"""Toy-world backgrounds: gradients, stripes, checkers, smooth noise and real photographs, some panning.

Photos come from the images that ship inside scikit-image's wheel (``skimage/data/``), so the world
is not only flat shapes and still nothing is downloaded: only files present in the installed package
are used (``skimage.data.eagle()``, ``lily()``, ``kidney()``, ``cells3d()``, ``brain()``, ``skin()``...
fetch from the network through pooch and are never called). The files are read with Pillow straight
from the package folder, found without importing scikit-image (its import costs ~0.3 s and would pull
its lazy loader and fetchers in for no gain).

A background is a whole clip [T, 3, H, W]: a panning one is a window sliding over a larger canvas by a
whole number of pixels per frame, so every frame is an exact crop (no resampling blur between frames).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .render import OBJECT_COLOURS, PALETTE

#: Colour photos: file in skimage/data -> the words a caption uses for them.
PHOTOS: dict[str, str] = {
    "coffee.png": "a coffee photo",
    "chelsea.png": "a cat photo",
    "rocket.jpg": "a rocket photo",
    "astronaut.png": "an astronaut photo",
    "motorcycle_left.png": "a motorcycle photo",
    "hubble_deep_field.jpg": "a galaxy photo",
    "ihc.png": "a microscope photo",
}
#: Grey textures, tinted from a dark to a light colour that suits them (RGB in [-1, 1]).
TEXTURES: dict[str, tuple[str, tuple[float, float, float], tuple[float, float, float]]] = {
    "grass.png": ("grass", (-0.85, -0.55, -0.9), (0.1, 0.6, -0.4)),
    "gravel.png": ("gravel", (-0.8, -0.8, -0.8), (0.55, 0.45, 0.3)),
    "brick.png": ("a brick wall", (-0.6, -0.85, -0.85), (0.7, 0.2, -0.1)),
}
PROCEDURAL: dict[str, str] = {
    "gradient": "a gradient background",
    "stripes": "a striped background",
    "checkers": "a checkered background",
    "noise": "a cloudy background",
}
#: Every phrase a background can add to a caption (after "on").
PHRASES: tuple[str, ...] = (*PROCEDURAL.values(), *PHOTOS.values(), *(v[0] for v in TEXTURES.values()))

_KINDS = ("gradient", "stripes", "checkers", "noise", "photo", "texture")
_KIND_WEIGHTS = (0.14, 0.14, 0.14, 0.14, 0.28, 0.16)
_PAN_PROBABILITY = 0.35
_PAN_SPEED = (0.008, 0.02)
_IMAGES: dict[str, np.ndarray] = {}  # file name -> uint8 array, loaded once per process


def _data_folder() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the toy world's photo backgrounds need scikit-image: pip install scikit-image")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_image(name: str) -> np.ndarray:
    """An image from skimage/data as uint8 [H, W, 3] (RGB) or [H, W] (grey), cached."""
    if name not in _IMAGES:
        path = _data_folder() / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: reinstall scikit-image (its wheel ships it)")
        with Image.open(path) as img:
            _IMAGES[name] = np.asarray(img.convert("L" if name in TEXTURES else "RGB"))
    return _IMAGES[name]


def _muted(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Distinct palette colours pulled toward grey, so saturated objects stand out against them."""
    names = rng.choice(len(OBJECT_COLOURS), size=count, replace=False)
    return [0.6 * np.asarray(PALETTE[OBJECT_COLOURS[i]], dtype=np.float32) for i in names]


def _blend(weight: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[H, W] weights in [0, 1] -> [3, H, W] colours from a (0) to b (1)."""
    return a[:, None, None] + weight.astype(np.float32) * (b - a)[:, None, None]


def _procedural(kind: str, rng: np.random.Generator, h: int, w: int, short: int) -> np.ndarray:
    """A [3, h, w] canvas of one procedural kind; feature sizes scale with the frame's short side."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    a, b = _muted(rng, 2)
    phi = rng.uniform(0, math.pi)
    c, s = math.cos(phi), math.sin(phi)
    if kind == "gradient":
        if rng.random() < 0.3:  # radial
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            weight = np.hypot(xs - cx, ys - cy) / math.hypot(w, h)
        else:
            proj = c * xs + s * ys
            weight = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
        return _blend(np.clip(weight, 0, 1), a, b)
    if kind == "stripes":
        period = rng.uniform(0.08, 0.2) * short
        wave = np.sin(2 * math.pi * (c * xs + s * ys) / period)
        return _blend(0.5 + 0.5 * np.clip(3 * wave, -1, 1), a, b)  # soft-edged: no stair-stepping
    if kind == "checkers":
        cell = rng.uniform(0.07, 0.16) * short
        phi = rng.choice([0.0, rng.uniform(0, math.pi / 2)])
        c, s = math.cos(phi), math.sin(phi)
        wave = np.sin(math.pi * (c * xs + s * ys) / cell) * np.sin(math.pi * (-s * xs + c * ys) / cell)
        return _blend(0.5 + 0.5 * np.clip(6 * wave, -1, 1), a, b)
    if kind == "noise":  # value noise: a coarse random grid, bicubic-upsampled, two octaves
        octaves = []
        for cells in (rng.uniform(3, 6), rng.uniform(8, 14)):
            gh, gw = max(2, round(cells * h / short)), max(2, round(cells * w / short))
            grid = torch.from_numpy(rng.standard_normal((1, 1, gh, gw)).astype(np.float32))
            smooth = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            octaves.append(smooth[0, 0].numpy())
        n = octaves[0] + 0.35 * octaves[1]
        n = (n - n.min()) / max(float(n.max() - n.min()), 1e-6)
        return _blend(n, a, b)
    raise ValueError(f"unknown background kind {kind!r}")


def _photo_canvas(name: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random zoomed crop of a bundled image, resized (anti-aliased) to exactly [3, h, w]."""
    src = load_image(name)
    sh, sw = src.shape[:2]
    scale = rng.uniform(1.0, 2.0) * max(w / sw, h / sh)  # >= cover, so the crop box fits the source
    bw, bh = min(w / scale, sw), min(h / scale, sh)
    bx, by = rng.uniform(0, sw - bw), rng.uniform(0, sh - bh)
    img = Image.fromarray(src).resize((w, h), Image.Resampling.BILINEAR, box=(bx, by, bx + bw, by + bh))
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    if name in TEXTURES:
        _, dark, light = TEXTURES[name]
        return _blend((arr + 1.0) / 2.0, np.asarray(dark, np.float32), np.asarray(light, np.float32))
    return arr.transpose(2, 0, 1)


def sample_background(rng: np.random.Generator, frames: int, width: int, height: int,
                      pan_probability: float = _PAN_PROBABILITY,
                      pan_speed: tuple[float, float] = _PAN_SPEED) -> tuple[np.ndarray, str]:
    """Draw and render a background clip: (float32 [T, 3, H, W] in [-1, 1], its caption phrase).

    ``pan_probability`` of the clips pan at ``pan_speed`` (fractions of the short side per frame, rounded
    to whole pixels, at least one)."""
    kind = _KINDS[rng.choice(len(_KINDS), p=_KIND_WEIGHTS)]
    short = min(width, height)
    pan = (0, 0)
    if rng.random() < pan_probability and frames > 1:
        speed = max(1, round(rng.uniform(*pan_speed) * short))  # a few px per frame: a slow camera
        direction = rng.uniform(0, 2 * math.pi)
        pan = (round(speed * math.cos(direction)), round(speed * math.sin(direction)))
    ch, cw = height + abs(pan[1]) * (frames - 1), width + abs(pan[0]) * (frames - 1)
    if kind == "photo":
        name = list(PHOTOS)[rng.integers(len(PHOTOS))]
        canvas, phrase = _photo_canvas(name, rng, ch, cw), PHOTOS[name]
    elif kind == "texture":
        name = list(TEXTURES)[rng.integers(len(TEXTURES))]
        canvas, phrase = _photo_canvas(name, rng, ch, cw), TEXTURES[name][0]
    else:
        canvas, phrase = _procedural(kind, rng, ch, cw, short), PROCEDURAL[kind]
    canvas = np.clip(canvas, -1.0, 1.0).astype(np.float32)
    clip = np.empty((frames, 3, height, width), dtype=np.float32)
    for t in range(frames):
        ox = t * pan[0] if pan[0] >= 0 else (frames - 1 - t) * -pan[0]
        oy = t * pan[1] if pan[1] >= 0 else (frames - 1 - t) * -pan[1]
        clip[t] = canvas[:, oy:oy + height, ox:ox + width]
    return clip, phrase
