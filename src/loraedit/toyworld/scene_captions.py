"""The toy world's captions: how a scene's objects are named, and every word a caption can hold.

The world model's tokenizer is built from `CAPTION_WORDS` (`models.world_vocab`), so a caption may only
use words listed here; `caption_tokens` splits a caption the way that tokenizer does.
"""

from __future__ import annotations

import re

from .backgrounds import PHRASES
from .render import OBJECT_COLOURS, Thing

_ADJECTIVE = {"solid": "", "stripes": "striped", "dots": "dotted", "checks": "checkered"}
_NOUNS = ("square", "rectangle", "circle", "ellipse", "triangle", "diamond", "star", "card")
#: Every token a caption can contain (punctuation as its own token), for the toy tokenizer.
CAPTION_WORDS: tuple[str, ...] = tuple(sorted(
    {",", ".", "a", "an", "and", "on", "over", "turning", *OBJECT_COLOURS, *_NOUNS}
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


def scene_caption(things: list[Thing], background: str) -> str:
    """The objects named front to back as given, then the background: "a red square and a blue star on ..."."""
    phrases = [object_phrase(t) for t in things]
    objects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{objects} on {background}."


def caption_tokens(caption: str) -> list[str]:
    """Split a caption the way the toy tokenizer does (words, and punctuation as separate tokens)."""
    return re.findall(r"\w+|[^\w\s]", caption)
