"""Untrusted uploads: nothing leaves its session folder; only allowed types and sizes are kept, never half-written."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraedit import uploads
from loraedit.errors import InputError

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
MP4 = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64
SAFETENSORS = struct.pack("<Q", 2) + b"{}"


@pytest.fixture
def session(tmp_path):
    work = tmp_path / "work"
    session_id, folder = uploads.new_session(work)
    return work, session_id, folder


def _inside(path, folder) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


@pytest.mark.parametrize("name", [
    "../evil.png", "../../etc/passwd.png", "/etc/passwd.png", "sub/dir.png", "sub\\dir.png", "..\\evil.png",
    "..", ".", "", ".hidden.png", "-rf.png", "a..png", "nul.png", "CON.png", "evil.png\x00.mp4", "line\nbreak.png",
    "tab\tname.png", "ümlaut.png", "caf\u00e9.png", "x" * 200 + ".png", "name.png ", "name.png.", "~/x.png",
    "%2e%2e%2fevil.png", "C:\\x.png", "\u202egnp.exe",
])
def test_traversal_absolute_and_odd_names_are_refused(session, name):
    _, _, folder = session
    with pytest.raises(InputError, match="not allowed"):
        uploads.upload_path(folder, name, "image")
    with pytest.raises(InputError):
        uploads.save_upload(folder, name, [PNG], "image")
    assert list(folder.rglob("*")) == []  # nothing written anywhere


@settings(max_examples=300, deadline=None)
@given(name=st.text(min_size=0, max_size=40))
def test_any_name_is_refused_or_stays_in_the_session(tmp_path_factory, name):
    folder = tmp_path_factory.getbasetemp() / "any-name-session"
    folder.mkdir(exist_ok=True)
    for kind in uploads.KINDS:
        try:
            path = uploads.upload_path(folder, name, kind)
        except InputError:
            continue
        assert _inside(path, folder) and path.parent.resolve() == (folder / uploads.KINDS[kind].folder).resolve()
        assert path.name == name and "/" not in name and "\\" not in name and not name.startswith(".")


@pytest.mark.parametrize("name, kind", [("clip.exe", "video"), ("clip.png", "video"), ("edit.mp4", "image"),
                                        ("lora.ckpt", "lora"), ("lora.pt", "lora"), ("lora.bin", "lora"),
                                        ("edit.svg", "image"), ("cfg.py", "config"), ("mask.jpg", "mask-frame")])
def test_wrong_types_are_refused(session, name, kind):
    _, _, folder = session
    with pytest.raises(InputError, match="must be one of"):
        uploads.upload_path(folder, name, kind)


def test_unknown_kind_is_refused(session):
    with pytest.raises(InputError, match="unknown upload kind"):
        uploads.upload_path(session[2], "a.png", "script")


def test_valid_uploads_are_stored_in_their_place(session):
    _, _, folder = session
    assert uploads.save_upload(folder, "clip.mp4", [MP4[:10], MP4[10:]], "video") == folder / "clip.mp4"
    assert uploads.save_upload(folder, "frame 001.png", [PNG], "frame") == folder / "frames" / "frame 001.png"
    assert uploads.save_upload(folder, "m_001.png", [PNG], "mask-frame") == folder / "masks" / "m_001.png"
    assert uploads.save_upload(folder, "lora.safetensors", [SAFETENSORS], "lora").read_bytes() == SAFETENSORS
    assert uploads.save_upload(folder, "edit.toml", [b'frames = 49\n'], "config").is_file()
    assert (folder / "clip.mp4").read_bytes() == MP4
    assert not [p for p in folder.rglob(".*")]  # no temporary file left


def test_oversized_uploads_are_refused_while_streaming(session, monkeypatch):
    _, _, folder = session
    monkeypatch.setitem(uploads.KINDS, "image", uploads.UploadKind(frozenset({".png"}), 100))
    written = []

    def chunks():
        for _ in range(10**6):  # would be 64 MB: the limit stops it at the second chunk
            written.append(1)
            yield PNG
    with pytest.raises(InputError, match="larger than"):
        uploads.save_upload(folder, "big.png", chunks(), "image")
    assert len(written) == 2 and list(folder.rglob("*")) == []
    with pytest.raises(InputError, match="must be 1 to"):
        uploads.upload_path(folder, "big.png", "image", size=101)
    with pytest.raises(InputError, match="must be 1 to"):
        uploads.upload_path(folder, "empty.png", "image", size=0)


@pytest.mark.parametrize("name, data", [("fake.png", b"GIF89a" + b"\x00" * 30), ("fake.mp4", PNG),
                                        ("fake.safetensors", b"\x80\x04\x95pickle..."), ("empty.png", b""),
                                        ("fake.webm", MP4), ("bin.toml", b"a = 1\x00\x00")],
                         ids=["gif-as-png", "png-as-mp4", "pickle-as-safetensors", "empty", "mp4-as-webm",
                              "binary-toml"])
def test_content_must_match_the_claimed_type(session, name, data):
    _, _, folder = session
    kind = {".png": "image", ".mp4": "video", ".safetensors": "lora", ".webm": "video", ".toml": "config"}[
        name[name.rindex("."):]]
    with pytest.raises(InputError):
        uploads.save_upload(folder, name, [data], kind)
    assert list(folder.rglob("*")) == []


def test_symlinks_in_the_session_are_never_followed(session, tmp_path):
    _, _, folder = session
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"keep")
    (folder / "link.png").symlink_to(outside)
    with pytest.raises(InputError, match="cannot replace"):
        uploads.save_upload(folder, "link.png", [PNG], "image")
    (folder / "frames").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(InputError):
        uploads.save_upload(folder, "f1.png", [PNG], "frame")
    assert outside.read_bytes() == b"keep" and not (tmp_path / "f1.png").exists()


def test_sessions_are_apart(session):
    work, session_id, folder = session
    other_id, other = uploads.new_session(work)
    assert other_id != session_id and other != folder
    uploads.save_upload(folder, "edit.png", [PNG], "image")
    assert not (other / "edit.png").exists()
    assert uploads.session_folder(work, session_id) == folder
    for bad in ("../" + session_id, session_id + "/..", "0" * 32, session_id.upper(), "", "..", "sessions",
                json.dumps(session_id)):
        with pytest.raises(InputError, match="unknown session"):
            uploads.session_folder(work, bad)
