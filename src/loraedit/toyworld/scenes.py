"""Synthetic clips with known ground-truth edits: the toy world's procedural scene generator.

``generate(seed)`` draws a scene graph (a background, one to three objects with fills and motion, maybe
turning cards), picks one object to edit and how (recolour, repattern, reshape), and renders from that
one graph the input video, the edited object's silhouettes and the authors' box masks, and the
ground-truth edited video. Because both videos come from the same graph with only the edited object's
appearance changed, the ground truth keeps the original motion and occlusions exactly, and PSNR against
it measures whether an editing method did what a perfect editor would. A perfect editor given these
masks, that is: where the box rule drops a sliver of the object (under 0.5% of the frame, e.g. a card
edge-on or a corner peeking past an occluder) the ground truth keeps the original there too, since a
mask-guided method keeps every pixel outside its mask (about one scenario in eight has such a sliver).

Everything is drawn from a local ``numpy`` Generator seeded by ``seed``: the same seed gives
bit-identical tensors. Seeds from ``HELDOUT_SEED_BASE`` up are for evaluation only; pretraining draws
below it, so evaluation clips are never trained on.

Difficulty ``level``s (``DIFFICULTY``): 0 is level 1 made fully determined by frame 0 and the caption
(one speed on the model's token lattice, no camera pan); 1 is slow, smooth motion of one or two objects on a static or
slowly panning background, so copying frame 0 stays close to every later frame and a tiny model can
learn to carry it forward; 2 adds spin, breathing scale, a third object (occlusion) and turning cards
at moderate speed; 3 is the first world (fast objects crossing half the frame), kept bit-identical:
level 3 draws exactly the random numbers the generator drew before levels existed.

Beside it: ``scene_captions`` (how a scene is named, the words a caption may use), ``scenario_files``
(a scenario written as the files a user would bring) and ``square`` (the first, minimal clip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .backgrounds import sample_background
from .render import (
    ACCENT_COLOURS,
    OBJECT_COLOURS,
    PALETTE,
    PATTERNS,
    SHAPES,
    Fill,
    Motion,
    Thing,
    box_masks,
    composite,
    render_layer,
    visible,
)
from .scene_captions import scene_caption

HELDOUT_SEED_BASE = 1_000_000  # seeds >= this are evaluation-only; pretraining uses seeds below it

EDIT_KINDS = ("recolour", "repattern", "reshape")


@dataclass(frozen=True)
class Difficulty:
    """How hard a level's clips are to animate; speeds are fractions of the frame's short side per frame."""

    speed: tuple[float, float]  # object speed range
    spin_share: float  # share of non-card objects that spin
    spin_max: float  # radians per frame
    breathing_share: float  # share of objects whose scale oscillates
    max_objects: int
    card_share: float  # of scenes whose edited object is a turning card, when the seed chooses
    other_card_share: float  # of the other objects that are cards
    pan_probability: float  # of backgrounds that pan
    pan_speed: tuple[float, float]  # pan speed range (rounded to whole pixels, at least 1)
    #: 0: objects head anywhere, unnamed (the first world). N: each heads along one of N compass directions,
    #: and the caption says which ("a red star moving up left"). From frame 0 alone a heading cannot be known,
    #: so a model shown only frame 0 can at best blur the possible paths; named, the motion is learnable.
    compass: int = 0
    #: Motion on the world model's token grid: each axis moves by `speed` or stands (velocities (+-s, 0),
    #: (0, +-s), (+-s, +-s)), and the path stays inside the frame (no bounce). At 2 px a frame on 96 px, four
    #: frames (one latent frame) move an object by exactly one 8-px token, so every latent frame after the
    #: first is the one before shifted by a token: a copy the model's attention can make (its RoPE scores
    #: time and space offsets separately), where a sub-token shift must be resampled inside each token.
    lattice: bool = False


DIFFICULTY: dict[int, Difficulty] = {
    # Level 0 is level 1 with nothing left to guess: one speed (2 px a frame along each axis at 96 px, on the
    # token lattice), a static camera, a named heading. From frame 0 and the caption the whole clip is
    # determined, so the best prediction is the crisp clip itself. At level 1 the speed (3x range) and a
    # quarter of unnamed pans are not: the best a model can do there is blur the possible clips, and a
    # sampler that cannot commit to one draws the speckled object the v2 base drew (docs/RESULTS.md section 8).
    0: Difficulty(speed=(2 / 96, 2 / 96), spin_share=0.0, spin_max=0.0, breathing_share=0.0, max_objects=2,
                  card_share=0.0, other_card_share=0.0, pan_probability=0.0, pan_speed=(0.008, 0.012), compass=8,
                  lattice=True),
    1: Difficulty(speed=(0.005, 0.016), spin_share=0.0, spin_max=0.0, breathing_share=0.0, max_objects=2,
                  card_share=0.0, other_card_share=0.0, pan_probability=0.25, pan_speed=(0.008, 0.012), compass=8),
    2: Difficulty(speed=(0.008, 0.028), spin_share=0.5, spin_max=0.06, breathing_share=0.5, max_objects=3,
                  card_share=0.3, other_card_share=0.15, pan_probability=0.35, pan_speed=(0.008, 0.012), compass=8),
    3: Difficulty(speed=(0.01, 0.045), spin_share=0.5, spin_max=0.12, breathing_share=0.5, max_objects=3,
                  card_share=0.3, other_card_share=0.15, pan_probability=0.35, pan_speed=(0.008, 0.02)),
}
LEVELS = tuple(sorted(DIFFICULTY))
_MIN_VISIBLE = 0.04  # the edited object covers at least this much of frame 0 (and of the later frame)
_MAX_TRIES = 200

#: The world's camera: a Gaussian low-pass on every rendered frame (input and ground truth alike).
#: Measured on 60 held-out scenes, the codec fitted on 300 (linear, 16 channels, 4x temporal): at 8x
#: spatial the sharp world reaches 20.9 dB, at 4x 24.7 dB; with this blur at 4x, 32.4 dB (30.7 at
#: sigma 1.0). The codec caps every quality number, so the world is seen through a slightly soft lens.
CAMERA_BLUR_SIGMA = 1.25
#: Pixels beyond which the blur kernel is truncated: an edit changes nothing farther from the object.
CAMERA_BLUR_RADIUS = 4


@dataclass
class Scenario:
    """One generated clip with its known edit. Tensors are float32; video layout [T, 3, H, W] in [-1, 1]."""

    seed: int
    video: torch.Tensor  # [T, 3, H, W]
    edited_video: torch.Tensor  # ground truth, same shape; identical to video outside the silhouettes
    silhouette_masks: torch.Tensor  # [T, H, W] {0, 1}: edited object (original or edited) visible, in box
    box_masks: torch.Tensor  # [T, H, W] {0, 1}: per component, its box grown 10% (the method's input)
    caption: str  # describes the input's first frame
    edited_caption: str  # describes the edited first frame
    edit_kind: str  # "recolour" | "repattern" | "reshape"
    is_card: bool
    later_frame: int | None  # turning cards: a frame after the turn showing the (edited) back face

    @property
    def edited_first_frame(self) -> torch.Tensor:
        return self.edited_video[0]

    @property
    def edited_later_frame(self) -> torch.Tensor | None:
        return None if self.later_frame is None else self.edited_video[self.later_frame]


# ------------------------------------------------------------------------------ drawing a scene


def _far_colour(rng: np.random.Generator, avoid: set[str], far_from: tuple[str, ...] = ()) -> str:
    """A random object colour not in ``avoid`` and clearly different from each of ``far_from``."""
    def distance(a: str, b: str) -> float:
        return float(np.linalg.norm(np.subtract(PALETTE[a], PALETTE[b])))
    options = [c for c in OBJECT_COLOURS if c not in avoid and all(distance(c, f) > 0.9 for f in far_from)]
    options = options or [c for c in OBJECT_COLOURS if c not in avoid]
    return options[rng.integers(len(options))]


def _fill(rng: np.random.Generator, colour: str, size: float, pattern: str | None = None) -> Fill:
    if pattern is None:
        pattern = PATTERNS[rng.choice(len(PATTERNS), p=(0.4, 0.2, 0.2, 0.2))]
    angle = float(rng.choice([0.0, math.pi / 4, math.pi / 2, rng.uniform(0, math.pi)]))
    accent = ACCENT_COLOURS[rng.integers(len(ACCENT_COLOURS))]
    return Fill(pattern, colour, accent, period=max(3.0, size * rng.uniform(0.45, 0.75)), angle=angle)


def _other_pattern(rng: np.random.Generator, pattern: str) -> str:
    """Solid becomes a pattern; a pattern becomes solid half the time, else another pattern."""
    if pattern != "solid" and rng.random() < 0.5:
        return "solid"
    options = [p for p in PATTERNS if p not in ("solid", pattern)]
    return options[rng.integers(len(options))]


def _motion(rng: np.random.Generator, frames: int, width: int, height: int, rx: float, ry: float,
            card: bool, level: Difficulty) -> Motion:
    short = min(width, height)
    speed, heading = rng.uniform(*level.speed) * short, rng.uniform(0, 2 * math.pi)
    if level.compass:  # the same draw, snapped: the rest of the scene is what it would have been
        step = 2 * math.pi / level.compass
        heading = round(heading / step) % level.compass * step
    spin = 0.0 if card or rng.random() < 1 - level.spin_share else rng.uniform(-level.spin_max, level.spin_max)
    # Near upright in frame 0 whatever the shape (a square turned 45 degrees reads as a diamond, and a
    # reshape may make it one), so the caption's noun matches frame 0; spin turns it later.
    angle0 = 0.0 if card or rng.random() < 0.5 else rng.uniform(-0.3, 0.3)
    amp = 0.0 if rng.random() < 1 - level.breathing_share else rng.uniform(0.04, 0.12)
    turn = None
    if card:  # starts after frame 0 (which shows the front) and ends by 60% of the clip
        start = rng.uniform(0.1, 0.25) * (frames - 1)
        turn = (start, min(start + rng.uniform(0.2, 0.35) * (frames - 1), 0.6 * (frames - 1)))
    s = 1.0 + amp
    ex, ey = (s * math.hypot(rx, ry),) * 2 if spin or angle0 else (s * rx, s * ry)
    vx, vy = speed * math.cos(heading), speed * math.sin(heading)
    x_range, y_range = (ex, width - ex), (ey, height - ey)
    if level.lattice:  # each axis moves by `speed` or stands; the whole path inside the frame where it fits
        vx, vy = round(speed * round(math.cos(heading)), 9), round(speed * round(math.sin(heading)), 9)
        x_range = (ex + max(0.0, -vx * (frames - 1)), width - ex - max(0.0, vx * (frames - 1)))
        y_range = (ey + max(0.0, -vy * (frames - 1)), height - ey - max(0.0, vy * (frames - 1)))
    return Motion(x0=rng.uniform(x_range[0], max(x_range)), y0=rng.uniform(y_range[0], max(y_range)),
                  vx=vx, vy=vy, angle0=angle0, spin=spin,
                  scale_amp=amp, scale_period=rng.uniform(0.5, 2.0) * max(frames, 2),
                  scale_phase=rng.uniform(0, 2 * math.pi), turn=turn)


def _thing(rng: np.random.Generator, frames: int, width: int, height: int, card: bool, hero: bool,
           used: set[str], level: Difficulty) -> Thing:
    """One object; the edited one (``hero``) is drawn larger so it reads clearly in frame 0."""
    short = min(width, height)
    colour = _far_colour(rng, used)
    used.add(colour)
    if card:
        rx = rng.uniform(0.11, 0.17) * short
        ry = rx * rng.uniform(1.25, 1.5)
        back_colour = _far_colour(rng, used | {colour}, far_from=(colour,))
        used.add(back_colour)
        front = _fill(rng, colour, rx)
        back = _fill(rng, back_colour, rx, pattern=_other_pattern(rng, "solid"))  # backs are patterned
        return Thing("card", rx, ry, front, _motion(rng, frames, width, height, rx, ry, True, level), back)
    r = rng.uniform(0.14, 0.22) * short if hero else rng.uniform(0.1, 0.18) * short
    shape = SHAPES[rng.integers(len(SHAPES))]
    aspect = rng.uniform(0.6, 0.8) if shape in ("square", "circle") and rng.random() < 0.4 else 1.0
    rx, ry = (r, r * aspect) if rng.random() < 0.5 else (r * aspect, r)
    return Thing(shape, rx, ry, _fill(rng, colour, r), _motion(rng, frames, width, height, rx, ry, False, level))


def _edit(rng: np.random.Generator, thing: Thing, used: set[str]) -> tuple[Thing, str]:
    """The edited version of ``thing`` and the edit's kind; cards change both faces."""
    kinds = EDIT_KINDS[:2] if thing.is_card else EDIT_KINDS
    kind = kinds[rng.integers(len(kinds))]
    if kind == "recolour":
        front = replace(thing.front, colour=_far_colour(rng, used, far_from=(thing.front.colour,)))
        back = thing.back
        if back is not None:
            back = replace(back, colour=_far_colour(rng, used | {front.colour},
                                                    far_from=(back.colour, front.colour)))
        return replace(thing, front=front, back=back), kind
    if kind == "repattern":
        front = replace(thing.front, pattern=_other_pattern(rng, thing.front.pattern))
        back = thing.back
        if back is not None:
            back = replace(back, pattern=_other_pattern(rng, back.pattern))
        return replace(thing, front=front, back=back), kind
    others = [s for s in SHAPES if s != thing.shape]
    return replace(thing, shape=others[rng.integers(len(others))]), kind


# ----------------------------------------------------------------------------------------- generate


def generate(seed: int, frames: int = 17, size: tuple[int, int] = (96, 96),
             kind: str | None = None, level: int = 3) -> Scenario:
    """Render scenario ``seed`` at ``size`` = (width, height) and difficulty ``level`` (``DIFFICULTY``);
    ``kind`` "card"/"object" forces whether the edited object is a turning card (None: the seed decides,
    by the level's card share)."""
    width, height = (int(s) for s in size)
    if kind not in (None, "card", "object"):
        raise ValueError(f"kind {kind!r} is not one of None, 'card', 'object'")
    if level not in DIFFICULTY:
        raise ValueError(f"level {level!r} is not one of {LEVELS}")
    difficulty = DIFFICULTY[level]
    if frames < 1 or min(width, height) < 16:
        raise ValueError(f"a scenario needs frames >= 1 and sides >= 16 px, "
                         f"got {frames} frames at {width}x{height}")
    if kind == "card" and frames < 5:
        raise ValueError(f"a turning card needs frames >= 5 (front, turn, back), got {frames}")
    rng = np.random.default_rng(seed)
    # The draw happens whatever ``kind`` says, so a forced kind that matches the seed's gives its scene.
    drawn_card = rng.random() < difficulty.card_share
    card = drawn_card if kind is None else kind == "card"
    card = card and frames >= 5
    background, where = sample_background(rng, frames, width, height, difficulty.pan_probability,
                                          difficulty.pan_speed)
    for _ in range(_MAX_TRIES):
        scenario = _try_scene(rng, seed, frames, width, height, card, background, where, difficulty)
        if scenario is not None:
            return scenario
    raise RuntimeError(f"seed {seed}: no scene with a clearly visible edited object in {_MAX_TRIES} tries")


def _try_scene(rng: np.random.Generator, seed: int, frames: int, width: int, height: int, card: bool,
               background: np.ndarray, where: str, level: Difficulty) -> Scenario | None:
    """Draw one scene graph and render it, or None when the edit would not be clearly visible."""
    # 1. Scene graph: objects back to front; the edited one ("hero") at a random depth.
    count = int(rng.integers(1, level.max_objects + 1))
    hero = int(rng.integers(count))
    used: set[str] = set()
    things = [None] * count
    things[hero] = _thing(rng, frames, width, height, card, True, used, level)
    for i in range(count):
        if i != hero:
            things[i] = _thing(rng, frames, width, height, rng.random() < level.other_card_share, False, used,
                               level)
    edited_hero, edit_kind = _edit(rng, things[hero], used)

    # 2. Layers: the edited video swaps only the hero's layer, so everything else is shared.
    layers = [render_layer(t, frames, width, height) for t in things]
    edited_layers = list(layers)
    edited_layers[hero] = render_layer(edited_hero, frames, width, height)
    seen = visible(layers, hero, frames, width, height)
    seen_edit = visible(edited_layers, hero, frames, width, height)

    # 3. The edit must show: in frame 0 and, for cards, in a frame after the turn (the back face).
    need = _MIN_VISIBLE * width * height
    if seen[0].sum() < need or seen_edit[0].sum() < need:
        return None
    later = None
    if card:
        after = list(range(math.ceil(things[hero].motion.turn[1]), frames))
        areas = [int(min(seen[t].sum(), seen_edit[t].sum())) for t in after]
        if not after or max(areas) < need:
            return None
        later = after[int(np.argmax(areas))]

    # 4. Render; restrict the edit to the box masks: a sliver the box rule drops (< 0.5% of the frame)
    # stays unedited in the ground truth, as no mask-guided method may change it.
    # The camera blur spreads the edit CAMERA_BLUR_RADIUS px past the object, so the silhouette is the
    # object widened by that footprint: exactly the pixels the edit can change.
    video = _camera(composite(background, layers))
    edited = _camera(composite(background, edited_layers))
    region = _widen(seen | seen_edit, CAMERA_BLUR_RADIUS)
    boxes = box_masks(region)
    dropped = region & ~boxes
    if dropped.any():
        t, y, x = dropped.nonzero()
        edited[t, :, y, x] = video[t, :, y, x]
    silhouettes = region & boxes

    # 5. Captions name the hero first, then the other objects visible in frame 0, front to back.
    shown = [i for i in reversed(range(count))
             if i != hero and visible(layers, i, 1, width, height)[0].mean() >= 0.01]
    narrate = level.compass > 0
    caption = scene_caption([things[hero]] + [things[i] for i in shown], where, narrate)
    edited_caption = scene_caption([edited_hero] + [things[i] for i in shown], where, narrate)

    return Scenario(seed=seed, video=torch.from_numpy(video), edited_video=torch.from_numpy(edited),
                    silhouette_masks=torch.from_numpy(silhouettes.astype(np.float32)),
                    box_masks=torch.from_numpy(boxes.astype(np.float32)), caption=caption,
                    edited_caption=edited_caption, edit_kind=edit_kind, is_card=card, later_frame=later)


def _camera(frames: np.ndarray) -> np.ndarray:
    """Gaussian low-pass of [T, 3, H, W] frames in space only (edges replicated), clipped to [-1, 1]."""
    from scipy.ndimage import gaussian_filter

    truncate = (CAMERA_BLUR_RADIUS + 0.49) / CAMERA_BLUR_SIGMA  # scipy's radius = int(truncate * sigma + 0.5)
    out = gaussian_filter(frames, sigma=(0, 0, CAMERA_BLUR_SIGMA, CAMERA_BLUR_SIGMA), mode="nearest",
                          truncate=truncate)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _widen(masks: np.ndarray, radius: int) -> np.ndarray:
    """Dilate boolean [T, H, W] masks by a (2r+1)-square in space (covers the blur kernel's support)."""
    from scipy.ndimage import maximum_filter

    return maximum_filter(masks, size=(1, 2 * radius + 1, 2 * radius + 1), mode="constant", cval=0)





