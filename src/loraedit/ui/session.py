"""One browser tab's work: a private folder from `loraedit.uploads`, and what the user gave and made in it.

The `Session` lives in Gradio's server-side state (the browser never sees it); its folder is looked up
through `uploads.session_folder` every time a path is needed. Every uploaded file enters the folder through
`store_upload` / `store_mask_frames`, which hand the bytes to `uploads.save_upload` under a name the app
chooses: of the browser's file name only the suffix is used (checked there against the field's allowed
types and the file's first bytes), and for mask frames the name's order.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import media, uploads
from ..api import ClipInputs, EditedFrame
from ..errors import InputError
from ..masks import Box

CHUNK = 1 << 20
MASK_FRAMES = uploads.KINDS["mask-frame"].folder  # where uploaded mask PNGs go: a fixed subfolder


@dataclass(frozen=True)
class Trained:
    """A LoRA this session trained, and the clip it was trained on (sampling with it reuses that clip)."""

    inputs: ClipInputs
    loras: tuple[Path, ...]
    mode: str  # the training mode (sampling with the LoRA uses the same condition)


@dataclass
class Session:
    """What one tab has given and made so far; every path lies inside the session's folder."""

    id: str
    work: Path
    video: Path | None = None
    masks: Path | None = None  # folder of PNGs or a mask video, one mask per source frame
    reference: Path | None = None  # ground-truth edited video, for the metrics (the toy example has one)
    edited_first: Path | None = None
    edited_frames: dict[int, EditedFrame] = field(default_factory=dict)  # by source frame index
    points: list[tuple[int, float, float, int]] = field(default_factory=list)  # (frame, x, y, label)
    boxes: dict[int, Box] = field(default_factory=dict)  # key-frame boxes (or SAM2 box prompts), by frame
    corner: tuple[int, float, float] | None = None  # first corner of a box being drawn
    trained: Trained | None = None
    edits: list = field(default_factory=list)  # this session's results (`history.Edit`), oldest first
    cancelled: tuple | None = None  # (the result path, (inputs, first frame, settings)) of a cancelled training
    results: int = 0  # results made so far (names them)
    stored: int = 0  # files and folders stored so far (numbers their names, so none is ever replaced)

    @classmethod
    def start(cls, work: Path) -> Session:
        """A new session with its own private folder under `work`."""
        session_id, _ = uploads.new_session(work)
        return cls(session_id, Path(work))

    @property
    def folder(self) -> Path:
        """The session's folder, looked up (and checked) by id every time."""
        return uploads.session_folder(self.work, self.id)

    def place(self, name: str) -> Path:
        """A path the app itself names inside the session folder (for files it makes, not uploads)."""
        return self.folder / name

    def require_clip(self) -> Path:
        if self.video is None:
            raise InputError("no clip is loaded: upload a video or load the toy-world example first")
        return self.video

    def require_masks(self) -> Path:
        if self.masks is None:
            raise InputError("no masks yet: make them from clicks or boxes (Make masks), or upload mask files")
        return self.masks

    def require_edited_first(self) -> Path:
        if self.edited_first is None:
            raise InputError("no edited first frame: upload your edit of the clip's first frame")
        return self.edited_first

    def clear_prompts(self) -> None:
        self.points, self.boxes, self.corner = [], {}, None

    def bump(self) -> int:
        """The next number for a stored file or folder's name."""
        self.stored += 1
        return self.stored

    def next_result(self) -> Path:
        """The path of the next result video: results/edit-N.mp4."""
        self.results += 1
        return self.place("results") / f"edit-{self.results}.mp4"


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def store_upload(session: Session, received: str | Path, stem: str, kind: str) -> Path:
    """Store an upload (Gradio's received copy) in the session as `stem-N` + its suffix, checked by `uploads`.

    The number makes every stored file new, so a LoRA's record of the clip it was trained on stays true
    after the user uploads another clip.
    """
    suffix = Path(received).suffix.lower()
    return uploads.save_upload(session.folder, f"{stem}-{session.bump()}{suffix}", _chunks(Path(received)), kind)


def store_mask_frames(session: Session, received: list[str | Path]) -> Path:
    """Store uploaded mask PNGs as the session's mask folder, replacing earlier ones; in their names' order.

    They are renamed 00000.png, 00001.png, ... in the natural order of the names they were sent with
    (`frame2` before `frame10`), which is the order a folder of them would be read in.
    """
    ordered = sorted((Path(p) for p in received), key=lambda p: media.natural_key(p.name))
    wrong = [p.name for p in ordered if p.suffix.lower() != ".png"]
    if wrong:
        raise InputError(f"{wrong[0]}: mask frames must be PNG images (or give one mask video)")
    staging = session.place(MASK_FRAMES)  # uploads' fixed folder for mask frames; emptied first
    shutil.rmtree(staging, ignore_errors=True)
    for i, path in enumerate(ordered):
        uploads.save_upload(session.folder, f"{i:05d}.png", _chunks(path), "mask-frame")
    folder = session.place(f"masks-{session.bump()}")  # a set of masks is never changed once stored
    staging.rename(folder)
    return folder


def store_frames_zip(session: Session, received: str | Path, kind: str, max_files: int) -> Path:
    """A zip of frame images (`kind` "frame") or mask PNGs ("mask-frame") stored as a new folder of the session.

    The zip is stored first (`uploads` checks its type and size); then each member is copied in through
    `uploads.save_upload` under a name the app picks (00000.png, ...: the members' natural order, their suffix
    checked like any upload); member paths are only ever sorted, never used as paths. Folders, hidden files
    and macOS `__MACOSX/` entries are skipped; more than `max_files` images, or more unpacked bytes than the
    zip kind's limit, are refused before anything is unpacked.
    """
    import zipfile
    from pathlib import PurePosixPath

    stored = store_upload(session, received, "frames", "frames-zip")
    try:
        with zipfile.ZipFile(stored) as archive:
            members = [m for m in archive.infolist() if not m.is_dir() and "__MACOSX" not in m.filename
                       and not PurePosixPath(m.filename).name.startswith(".")]
            if not members:
                raise InputError(f"{Path(received).name}: the zip has no images in it")
            if len(members) > max_files:
                raise InputError(f"{Path(received).name}: {len(members)} files, more than this app's limit of "
                                 f"{max_files}: give fewer frames, or a video")
            if sum(m.file_size for m in members) > uploads.KINDS["frames-zip"].max_bytes:
                raise InputError(f"{Path(received).name}: unpacks to more than "
                                 f"{uploads.KINDS['frames-zip'].max_bytes >> 20} MB")
            members.sort(key=lambda m: media.natural_key(PurePosixPath(m.filename).name))
            staging = session.place(uploads.KINDS[kind].folder)
            shutil.rmtree(staging, ignore_errors=True)
            for i, member in enumerate(members):
                suffix = PurePosixPath(member.filename).suffix.lower()
                with archive.open(member) as f:
                    uploads.save_upload(session.folder, f"{i:05d}{suffix}", iter(lambda: f.read(CHUNK), b""), kind)
    except zipfile.BadZipFile:
        raise InputError(f"{Path(received).name} is not a readable zip file: zip the frames again") from None
    finally:
        stored.unlink(missing_ok=True)
    folder = session.place(f"{'frames' if kind == 'frame' else 'masks'}-{session.bump()}")
    staging.rename(folder)
    return folder
