"""The toy world's captions: how a scene's objects are named, and every word a caption can hold.

The world model's tokenizer is built from `CAPTION_WORDS` (`models.world_vocab`), so a caption may only
use words listed here; `caption_tokens` splits a caption the way that tokenizer does.
"""

from __future__ import annotations

import math
import re

from .backgrounds import PHRASES
from .render import OBJECT_COLOURS, Thing

_ADJECTIVE = {"solid": "", "stripes": "striped", "dots": "dotted", "checks": "checkered"}
_NOUNS = ("square", "rectangle", "circle", "ellipse", "triangle", "diamond", "star", "card")
#: Every token a caption can contain (punctuation as its own token), for the toy tokenizer.
CAPTION_WORDS: tuple[str, ...] = tuple(sorted(
    {",", ".", "a", "an", "and", "on", "over", "turning", "moving", "up", "down", "left", "right", *OBJECT_COLOURS,
     *_NOUNS}
    | {w for w in _ADJECTIVE.values() if w}
    | {w for phrase in PHRASES for w in phrase.split()}))


def object_phrase(thing: Thing) -> str:
    """E.g. "a red striped square", "an orange card turning over" (front face: what frame 0 shows)."""
    noun = thing.shape
    if noun in ("square", "circle") and abs(thing.rx / thing.ry - 1) > 0.1:
        noun = {"square": "rectangle", "circle": "ellipse"}[noun]
    words = [thing.front.colour, _ADJECTIVE[thing.front.pattern], noun]
    text = " ".join(w for w in words if w) + (" turning over" if thing.is_card else "")
    return ("an " if text[0] in "aeiou" else "a ") + text


def heading_words(thing: Thing) -> str:
    """Where an object heads at frame 0, in the caption's words: "moving up left", "moving right"."""
    vx, vy = thing.motion.vx, thing.motion.vy
    speed = math.hypot(vx, vy)
    if speed == 0:
        return ""
    vertical = "down" if vy > 0.3 * speed else "up" if vy < -0.3 * speed else ""  # image rows grow downwards
    horizontal = "right" if vx > 0.3 * speed else "left" if vx < -0.3 * speed else ""
    return " ".join(w for w in ("moving", vertical, horizontal) if w)


def scene_caption(things: list[Thing], background: str, narrate: bool = False) -> str:
    """The objects named front to back as given, then the background: "a red square and a blue star on ...";
    `narrate` adds where each object heads ("a red square moving left and ..."; `Difficulty.compass`)."""
    phrases = [object_phrase(t) + (" " + heading_words(t) if narrate and heading_words(t) else "") for t in things]
    objects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{objects} on {background}."


def mirror_caption(caption: str) -> str:
    """The caption of the clip mirrored left-right: "moving up left" becomes "moving up right" (pretraining
    mirrors clips, and a named heading must turn with them or the caption contradicts the motion)."""
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left", caption)


def caption_tokens(caption: str) -> list[str]:
    """Split a caption the way the toy tokenizer does (words, and punctuation as separate tokens)."""
    return re.findall(r"\w+|[^\w\s]", caption)
