"""Rasterising the toy world's scene graph: shapes, fills, motion, anti-aliased layers, compositing.

Every object is rendered on its own as a *layer*: per frame, the pixel box it can touch, its coverage
alpha (the fraction of its 2x2 sub-samples inside the shape) and its premultiplied colour. Layers are
composited back to front over the background. Keeping layers apart is what makes a ground-truth edit
exact: the edited video is the same composite with one layer swapped, so every pixel the edited object
does not reach (or reaches only under an opaque occluder) goes through identical float operations and
is bit-identical to the input video.

Coordinates are continuous pixels: pixel (row i, col j) covers [i, i+1) x [j, j+1). Images are numpy
float32 in the package's layout ([T, 3, H, W], [-1, 1]), so the scene module hands them to torch
without a transpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

#: Named colours, RGB in [-1, 1]. Captions name objects by these names, so they must look like them.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, -0.75, -0.75),
    "orange": (0.95, 0.15, -0.85),
    "yellow": (0.9, 0.8, -0.75),
    "green": (-0.7, 0.55, -0.7),
    "cyan": (-0.75, 0.75, 0.85),
    "blue": (-0.75, -0.45, 0.9),
    "purple": (0.2, -0.75, 0.7),
    "pink": (0.95, -0.15, 0.45),
    "brown": (0.05, -0.45, -0.75),
    "white": (0.95, 0.95, 0.95),
    "black": (-0.9, -0.9, -0.9),
}
#: Colours an object's main fill can take (white/black are kept for the second colour of patterns).
OBJECT_COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "brown")
ACCENT_COLOURS = ("white", "black")
PATTERNS = ("solid", "stripes", "dots", "checks")
SHAPES = ("square", "circle", "triangle", "diamond", "star")  # "card" is drawn by the same code
SUPERSAMPLE = 2  # 2x2 sub-samples per pixel: soft edges at 4x the work of hard ones


@dataclass(frozen=True)
class Fill:
    """How an object's surface looks, in its own coordinates (so patterns move and turn with it)."""

    pattern: str  # one of PATTERNS
    colour: str  # main colour (the one captions name)
    accent: str  # the pattern's second colour
    period: float  # pattern period in object pixels at scale 1
    angle: float  # pattern orientation, radians


@dataclass(frozen=True)
class Motion:
    """Where an object is at frame t: bouncing linear motion, spin, gentle breathing scale, a card turn."""

    x0: float
    y0: float
    vx: float  # pixels per frame
    vy: float
    angle0: float  # in-plane rotation at frame 0, radians
    spin: float  # radians per frame
    scale_amp: float  # scale = 1 + amp * sin(2 pi t / period + phase)
    scale_period: float
    scale_phase: float
    turn: tuple[float, float] | None = None  # cards: (start, end) frame of the turn about the vertical axis


@dataclass(frozen=True)
class Thing:
    """One object of the scene graph; ``back`` is set for cards only (the face shown after the turn)."""

    shape: str  # one of SHAPES or "card"
    rx: float  # half width / half height at scale 1, pixels
    ry: float
    front: Fill
    motion: Motion
    back: Fill | None = None

    @property
    def is_card(self) -> bool:
        return self.shape == "card"


class Patch(NamedTuple):
    """One object in one frame: its pixel box origin, coverage [h, w] and premultiplied colour [3, h, w]."""

    y0: int
    x0: int
    alpha: np.ndarray
    premult: np.ndarray


# ------------------------------------------------------------------------------------------ motion


def half_extent(thing: Thing) -> tuple[float, float]:
    """Largest half width/height the object can reach; it does not depend on the shape, so a reshaped
    object keeps exactly the same motion (its bounce limits are the same)."""
    s = 1.0 + thing.motion.scale_amp
    m = thing.motion
    if m.spin or m.angle0:
        r = s * math.hypot(thing.rx, thing.ry)
        return r, r
    return s * thing.rx, s * thing.ry


def _bounce(p0: float, v: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    """Position of a point moving at speed v that reflects off lo and hi (a triangle wave)."""
    span = hi - lo
    if span <= 0:
        return np.full(t.shape, (lo + hi) / 2)
    x = np.mod(p0 - lo + v * t, 2 * span)
    return lo + span - np.abs(x - span)


def trajectory(thing: Thing, frames: int, width: int, height: int) -> dict[str, np.ndarray]:
    """Per-frame centre, rotation, scale and (for cards) cos of the turn angle, all float64 [T]."""
    m, t = thing.motion, np.arange(frames, dtype=np.float64)
    ex, ey = half_extent(thing)
    turn_cos = np.ones(frames)
    if m.turn is not None:
        start, end = m.turn
        s = np.clip((t - start) / (end - start), 0.0, 1.0)
        turn_cos = np.cos(math.pi * s * s * (3 - 2 * s))  # smoothstep: the card eases in and out
    return {
        "cx": _bounce(m.x0, m.vx, ex, width - ex, t),
        "cy": _bounce(m.y0, m.vy, ey, height - ey, t),
        "angle": m.angle0 + m.spin * t,
        "scale": 1.0 + m.scale_amp * np.sin(2 * math.pi * t / m.scale_period + m.scale_phase),
        "turn_cos": turn_cos,
    }


# ------------------------------------------------------------------------------- shapes and fills


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five-pointed star with straight edges, point up, outer radius 1 (inner 0.48: not too spiky,
    so it keeps enough area to read as a star at 96 px)."""
    inner, step = 0.48, 2 * math.pi / 5
    r = np.hypot(u, v)
    phi = np.mod(np.arctan2(u, -v), step)
    psi = np.minimum(phi, step - phi)  # angle from the nearest point of the star
    # The edge runs from the point (1, 0) to the inner corner at angle step/2: inside = below that line.
    px, py = inner * math.cos(step / 2), inner * math.sin(step / 2)
    nx, ny = py, 1.0 - px  # normal of the edge, pointing away from the centre
    return r * (nx * np.cos(psi) + ny * np.sin(psi)) <= nx


def _inside(shape: str, u: np.ndarray, v: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """Boolean inside test in object coordinates (u right, v down, origin at the object's centre)."""
    a, b = u / rx, v / ry
    if shape == "square":
        return (np.abs(a) <= 1) & (np.abs(b) <= 1)
    if shape == "circle":
        return a * a + b * b <= 1
    if shape == "diamond":
        return np.abs(a) + np.abs(b) <= 1
    if shape == "triangle":  # apex up, base along the bottom of the box
        return (b <= 1) & (np.abs(a) <= (b + 1) / 2)
    if shape == "star":
        return _star(a, b)
    if shape == "card":  # rounded rectangle: signed distance of a box with corner radius rc
        rc = 0.2 * min(rx, ry)
        qx, qy = np.abs(u) - (rx - rc), np.abs(v) - (ry - rc)
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
        return outside <= rc
    raise ValueError(f"unknown shape {shape!r}: choose one of {SHAPES + ('card',)}")


def _accent(fill: Fill, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Where a fill shows its accent colour (bool, the shape of u), or None for a solid fill."""
    if fill.pattern == "solid":
        return None
    c, s = math.cos(fill.angle), math.sin(fill.angle)
    pu, pv = (c * u + s * v) / fill.period, (-s * u + c * v) / fill.period
    if fill.pattern == "stripes":
        return np.mod(pu, 1.0) < 0.5
    if fill.pattern == "dots":
        du, dv = np.mod(pu, 1.0) - 0.5, np.mod(pv, 1.0) - 0.5
        return du * du + dv * dv < 0.3 * 0.3
    if fill.pattern == "checks":
        return (np.floor(pu) + np.floor(pv)) % 2 == 0
    raise ValueError(f"unknown pattern {fill.pattern!r}: choose one of {PATTERNS}")


def _downsample(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks of a 2-D array (strided adds: much faster than a reshape-reduce)."""
    total = np.zeros((a.shape[0] // k, a.shape[1] // k), dtype=np.float32)
    for i in range(k):
        for j in range(k):
            total += a[i::k, j::k]
    return total * np.float32(1.0 / (k * k))


# ------------------------------------------------------------------------------------ rasterising


def _patch(thing: Thing, pose: dict[str, float], width: int, height: int) -> Patch | None:
    """The object in one frame at the pose given, or None where it covers no pixel."""
    cx, cy, angle, scale, turn_cos = (pose[k] for k in ("cx", "cy", "angle", "scale", "turn_cos"))
    squash = abs(turn_cos)  # a card turning about its vertical axis shows |cos| of its width
    if squash < 1e-3:
        return None  # edge-on
    c, s = math.cos(angle), math.sin(angle)
    ex = scale * (abs(thing.rx * squash * c) + abs(thing.ry * s))
    ey = scale * (abs(thing.rx * squash * s) + abs(thing.ry * c))
    x0, x1 = max(math.floor(cx - ex), 0), min(math.ceil(cx + ex), width)
    y0, y1 = max(math.floor(cy - ey), 0), min(math.ceil(cy + ey), height)
    if x1 <= x0 or y1 <= y0:
        return None
    k = SUPERSAMPLE
    xs = (x0 + (np.arange((x1 - x0) * k, dtype=np.float32) + 0.5) / k) - cx
    ys = (y0 + (np.arange((y1 - y0) * k, dtype=np.float32) + 0.5) / k) - cy
    dx, dy = xs[None, :], ys[:, None]
    u = (c * dx + s * dy) / (scale * turn_cos)  # signed: the back face is seen mirrored
    v = (-s * dx + c * dy) / scale
    inside = _inside(thing.shape, u, v, thing.rx, thing.ry)
    alpha = _downsample(inside.astype(np.float32), k)
    if not alpha.any():
        return None
    # Two colours per fill, so the premultiplied colour is alpha * main + beta * (accent - main), where
    # beta is the coverage of the accent part: no colour array at sub-sample resolution is needed.
    fill = thing.front if turn_cos > 0 or thing.back is None else thing.back
    main = np.asarray(PALETTE[fill.colour], dtype=np.float32)
    premult = main[:, None, None] * alpha
    accent = _accent(fill, u, v)
    if accent is not None:
        beta = _downsample((inside & accent).astype(np.float32), k)
        premult += (np.asarray(PALETTE[fill.accent], dtype=np.float32) - main)[:, None, None] * beta
    if thing.is_card:  # a turning card catches less light edge-on; both versions share the factor
        premult *= np.float32(0.6 + 0.4 * squash)
    return Patch(y0, x0, alpha, premult)


def render_layer(thing: Thing, frames: int, width: int, height: int) -> list[Patch | None]:
    """The object's patch in every frame."""
    track = trajectory(thing, frames, width, height)
    return [_patch(thing, {k: float(v[t]) for k, v in track.items()}, width, height) for t in range(frames)]


def composite(background: np.ndarray, layers: list[list[Patch | None]]) -> np.ndarray:
    """Layers (back to front) over a background [T, 3, H, W] -> video [T, 3, H, W] (a new array)."""
    video = background.copy()
    for layer in layers:
        for t, p in enumerate(layer):
            if p is None:
                continue
            h, w = p.alpha.shape
            region = video[t, :, p.y0:p.y0 + h, p.x0:p.x0 + w]
            region[...] = p.premult + (1.0 - p.alpha) * region
    return video


def visible(layers: list[list[Patch | None]], index: int, frames: int, width: int,
            height: int) -> np.ndarray:
    """[T, H, W] bool for the first ``frames`` frames: pixels where layer ``index`` contributes to the
    composite, i.e. it covers some of the pixel and no layer in front covers all of it."""
    out = np.zeros((frames, height, width), dtype=bool)
    for t, p in enumerate(layers[index][:frames]):
        if p is not None:
            h, w = p.alpha.shape
            out[t, p.y0:p.y0 + h, p.x0:p.x0 + w] = p.alpha > 0
    for layer in layers[index + 1:]:
        for t, p in enumerate(layer[:frames]):
            if p is not None:
                h, w = p.alpha.shape
                out[t, p.y0:p.y0 + h, p.x0:p.x0 + w] &= p.alpha < 1
    return out


def box_masks(silhouettes: np.ndarray, min_fraction: float = 0.005) -> np.ndarray:
    """The authors' box masks [T, H, W] bool (`loraedit.masks.box_masks`: per 8-connected component its box
    grown 10%, clipped); the world drops components under ``min_fraction`` of the frame as segmentation specks."""
    import torch

    from ..masks import box_masks as authors_box_masks

    _, height, width = silhouettes.shape
    boxes = authors_box_masks(torch.from_numpy(silhouettes.astype(np.float32)), min_pixels=min_fraction * height * width)
    return boxes.numpy() > 0.5
