"""Uploaded files for the web app: one private folder per session, safe names, allowed types and sizes.

The web app must create sessions with `new_session`, find them with `session_folder` and store every
uploaded file with `save_upload`; nothing else in it may build a path from a name the browser sent.
A bad name is refused, never "cleaned": cleaning `../../x` into `x` hides an attack and may collide with
another file. Sizes are enforced while the bytes stream in (a Content-Length header can lie), the first
bytes must match the file type the name claims, and a file appears under its final name only when it is
complete (temporary name, then rename). Everything raises `InputError` (an HTTP 400 for the app).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

_VIDEO = frozenset({".mp4", ".mov", ".webm", ".mkv"})
_IMAGE = frozenset({".png", ".jpg", ".jpeg", ".webp"})
_MB = 1 << 20


@dataclass(frozen=True)
class UploadKind:
    """What one upload field accepts and where its files go inside the session folder."""

    suffixes: frozenset[str]
    max_bytes: int
    folder: str = ""  # fixed subfolder of the session ("" = the session folder itself), never from the user


KINDS = {
    "video": UploadKind(_VIDEO, 2048 * _MB),
    "frame": UploadKind(_IMAGE, 64 * _MB, "frames"),  # one frame of a video given as images
    "mask": UploadKind(_VIDEO | {".png"}, 2048 * _MB),
    "mask-frame": UploadKind(frozenset({".png"}), 64 * _MB, "masks"),
    "image": UploadKind(_IMAGE, 64 * _MB),  # an edited first or later frame
    "lora": UploadKind(frozenset({".safetensors"}), 4096 * _MB),
    "config": UploadKind(frozenset({".toml"}), _MB // 16),
    "frames-zip": UploadKind(frozenset({".zip"}), 2048 * _MB),  # a clip's frames or masks, unpacked by the app
}

#: Letters, digits, dot, dash, underscore and space; starting with a letter or digit (no hidden files,
#: no "..", no option-like "-x"); at most 128 characters. Anything else (slashes, backslashes, NUL,
#: control characters, non-ASCII look-alikes) is refused.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,127}")
_WINDOWS_RESERVED = re.compile(r"(con|prn|aux|nul|com\d|lpt\d)(\..*)?", re.IGNORECASE)
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_SESSIONS = "sessions"


def new_session(work_root: Path) -> tuple[str, Path]:
    """A new session: an unguessable id and its private folder under `work_root/sessions/`."""
    session_id = secrets.token_hex(16)
    folder = Path(work_root) / _SESSIONS / session_id
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700)
    return session_id, folder


def session_folder(work_root: Path, session_id: str) -> Path:
    """The folder of an existing session; ids that are not ours (or try to walk elsewhere) are refused."""
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
        raise InputError("unknown session: start a new one")
    folder = Path(work_root) / _SESSIONS / session_id
    if folder.is_symlink() or not folder.is_dir():
        raise InputError("unknown session: start a new one")
    return folder


def upload_path(session: Path, filename: str, kind: str, size: int | None = None) -> Path:
    """Where an upload named `filename` goes in `session`, after checking its name, type and (if known) size."""
    spec = KINDS.get(kind)
    if spec is None:
        raise InputError(f"unknown upload kind {kind!r}: use one of {', '.join(KINDS)}")
    if not isinstance(filename, str) or not _NAME.fullmatch(filename) or ".." in filename \
            or filename.endswith((" ", ".")) or _WINDOWS_RESERVED.fullmatch(filename):
        raise InputError(f"file name {filename!r} is not allowed: use letters, digits, '.', '-', '_' and spaces "
                         "only, starting with a letter or digit (no folders)")
    suffix = Path(filename).suffix.lower()
    if suffix not in spec.suffixes:
        raise InputError(f"{filename}: a {kind} upload must be one of {', '.join(sorted(spec.suffixes))}")
    if size is not None and not 0 < size <= spec.max_bytes:
        raise InputError(f"{filename} is {size} bytes: a {kind} upload must be 1 to {spec.max_bytes // _MB} MB")
    folder = Path(session) / spec.folder  # Path("s") / "" is Path("s")
    path = folder / filename
    if path.is_symlink() or folder.is_symlink() or path.is_dir():
        raise InputError(f"{filename}: cannot replace what is stored under that name; choose another name")
    if path.resolve().parent != Path(session).resolve() / spec.folder:  # belt and braces: nothing escapes
        raise InputError(f"file name {filename!r} is not allowed: it leaves the session folder")
    return path


def save_upload(session: Path, filename: str, chunks: Iterable[bytes], kind: str) -> Path:
    """Store an upload from its byte chunks; refused (and nothing kept) if too big or not the claimed type."""
    path = upload_path(session, filename, kind)
    limit = KINDS[kind].max_bytes
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f".upload-{secrets.token_hex(8)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        written, head = 0, b""
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                written += len(chunk)
                if written > limit:
                    raise InputError(f"{filename} is larger than {limit // _MB} MB, the limit for a {kind} upload")
                if len(head) < 16:
                    head += chunk[: 16 - len(head)]
                f.write(chunk)
        if written == 0:
            raise InputError(f"{filename} is empty: upload the file again")
        if not _looks_like(path.suffix.lower(), head):
            raise InputError(f"{filename} is not a {path.suffix.lower()} file (its first bytes say otherwise): "
                             "upload the real file")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _looks_like(suffix: str, head: bytes) -> bool:
    """Whether a file's first 16 bytes carry the signature of the type its suffix claims."""
    if suffix == ".png":
        return head.startswith(b"\x89PNG\r\n\x1a\n")
    if suffix in (".jpg", ".jpeg"):
        return head.startswith(b"\xff\xd8\xff")
    if suffix == ".webp":
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    if suffix in (".mp4", ".mov"):
        return head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
    if suffix in (".webm", ".mkv"):
        return head.startswith(b"\x1a\x45\xdf\xa3")
    if suffix == ".safetensors":  # u64 little-endian header length, then the JSON header
        return len(head) >= 9 and 0 < int.from_bytes(head[:8], "little") < 100 * _MB and head[8:9] == b"{"
    if suffix == ".zip":
        return head.startswith(b"PK\x03\x04")
    if suffix == ".toml":
        return b"\x00" not in head
    return False
