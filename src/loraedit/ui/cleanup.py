"""Old sessions go: a session folder unused for `--keep-hours` is removed, never one in use.

"Used" is the later of the newest file in the folder and the last time its tab did anything (`touch`, called
by every event handler); a session with a job running or waiting in the queue is in use whatever its age
(`hold`). The sweep runs when a new tab opens, so an idle server does no work; it only ever looks inside
`work/sessions/` at names that are session ids (`uploads.session_folder`).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import uploads
from ..errors import InputError

_LOCK = threading.Lock()
_SEEN: dict[str, float] = {}  # session id -> when its tab last did something (time.time())
_HELD: dict[str, int] = {}  # session id -> jobs running or queued for it


def touch(session_id: str) -> None:
    with _LOCK:
        _SEEN[session_id] = time.time()


@contextmanager
def hold(session_id: str) -> Iterator[None]:
    """The session is in use for the duration (a job, while it runs)."""
    with _LOCK:
        _HELD[session_id] = _HELD.get(session_id, 0) + 1
    try:
        yield
    finally:
        with _LOCK:
            _HELD[session_id] -= 1
            if not _HELD[session_id]:
                del _HELD[session_id]


def last_used(folder: Path) -> float:
    """The newest modification time of the folder or anything in it (the session's last write)."""
    newest = folder.stat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def remove_old_sessions(work: Path, keep_hours: float, now: float | None = None) -> list[str]:
    """Remove the sessions unused for more than `keep_hours` and not held by a job; returns their ids."""
    sessions = Path(work) / "sessions"
    if keep_hours <= 0 or not sessions.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for entry in sorted(sessions.iterdir()):
        try:
            folder = uploads.session_folder(work, entry.name)  # refuses anything that is not a session id
        except InputError:
            continue
        with _LOCK:  # held while deciding and removing, so no job can start on it in between
            if entry.name in _HELD or now - max(_SEEN.get(entry.name, 0.0), last_used(folder)) <= keep_hours * 3600:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            _SEEN.pop(entry.name, None)
        removed.append(entry.name)
    return removed
