"""Reliability: property tests of media and masks, a fuzz pass on the readers, GPU out-of-memory advice,
and a guard that nothing in the package can unpickle.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraedit import conditioning, lora_io, media
from loraedit.backends import wan_layout
from loraedit.backends.wan import WanBackend
from loraedit.cli import main
from loraedit.errors import InputError
from loraedit.validate import mask_coverage_problems

SRC = Path(__file__).resolve().parents[1] / "src" / "loraedit"

# ---- property tests: frame choice, geometry, masks ------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(num_source=st.integers(1, 400), k=st.integers(0, 60))
def test_uniform_frame_indices_property(num_source, k):
    num_target = 4 * k + 1
    if num_target > num_source:
        with pytest.raises(InputError, match=f"`frames` {media.largest_valid_frame_count(num_source)}"):
            media.uniform_frame_indices(num_source, num_target)
        return
    idx = media.uniform_frame_indices(num_source, num_target)
    assert len(idx) == num_target and idx[0] == 0
    assert idx[-1] == (num_source - 1 if num_target > 1 else 0)
    assert all(0 <= i < num_source for i in idx) and all(b > a for a, b in zip(idx, idx[1:]))  # never duplicated
    gaps = [b - a for a, b in zip(idx, idx[1:])]
    assert not gaps or max(gaps) - min(gaps) <= 1  # uniform


@settings(max_examples=50, deadline=None)
@given(num_target=st.integers(-3, 200).filter(lambda n: n < 1 or (n - 1) % 4))
def test_uniform_frame_indices_refuses_non_4k_plus_1(num_target):
    with pytest.raises(InputError, match="4k\\+1"):
        media.uniform_frame_indices(500, num_target)


@settings(max_examples=60, deadline=None)
@given(src_w=st.integers(1, 2000), src_h=st.integers(1, 2000), w16=st.integers(1, 60), h16=st.integers(1, 60))
def test_cover_size_covers_and_keeps_the_aspect(src_w, src_h, w16, h16):
    size = (16 * w16, 16 * h16)
    new_w, new_h = media.cover_size((src_w, src_h), size)
    assert new_w >= size[0] and new_h >= size[1]
    assert new_w == size[0] or new_h == size[1]  # one side fits exactly: the crop is minimal
    assert abs(new_w / new_h - src_w / src_h) <= src_w / src_h * (1 / min(new_w, new_h) + 1 / src_h + 1e-9) + 1 / new_h


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.integers(1, 6), src_h=st.integers(2, 48), src_w=st.integers(2, 48), dst_h=st.integers(1, 40),
       dst_w=st.integers(1, 40), value=st.floats(-1, 1), seed=st.integers(0, 2**16))
def test_cover_crop_keeps_constants_and_binary_masks(t, src_h, src_w, dst_h, dst_w, value, seed):
    constant = torch.full((t, 3, src_h, src_w), value)
    out = media.cover_crop(constant, (dst_w, dst_h))
    assert out.shape == (t, 3, dst_h, dst_w)
    torch.testing.assert_close(out, torch.full_like(out, value), atol=1e-5, rtol=0)
    masks = (torch.rand(t, src_h, src_w, generator=torch.Generator().manual_seed(seed)) > 0.5).float()
    fitted = media.cover_crop(masks, (dst_w, dst_h), mode="nearest")
    assert fitted.shape == (t, dst_h, dst_w) and bool(((fitted == 0) | (fitted == 1)).all())
    for full in (torch.ones_like(masks), torch.zeros_like(masks)):  # all / nothing stays all / nothing
        assert torch.equal(media.cover_crop(full, (dst_w, dst_h), mode="nearest"),
                           full[..., :1, :1].expand(t, dst_h, dst_w))


@settings(max_examples=40, deadline=None)
@given(num_source=st.integers(5, 40), k=st.integers(1, 5), h=st.integers(4, 40), w=st.integers(4, 40),
       seed=st.integers(0, 2**16))
def test_prepare_masks_picks_the_video_frames_and_stays_binary(num_source, k, h, w, seed):
    frames = min(4 * k + 1, media.largest_valid_frame_count(num_source))
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(num_source, h, w, generator=g) > 0.7).float()
    video = torch.rand(num_source, 3, h, w, generator=g) * 2 - 1
    out = media.prepare_masks(masks, frames, (16, 16))
    assert out.shape == (frames, 16, 16) and bool(((out == 0) | (out == 1)).all())
    idx = media.uniform_frame_indices(num_source, frames)
    for i, j in enumerate(idx):  # each mask frame is the one of the video frame picked at the same place
        assert torch.equal(out[i], media.cover_crop(masks[j], (16, 16), mode="nearest"))
    assert torch.equal(media.prepare_video(video, frames, (16, 16)), media.cover_crop(video[idx], (16, 16)))


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 4), h8=st.integers(1, 3), w8=st.integers(1, 3), seed=st.integers(0, 2**16),
       density=st.floats(0.0, 1.0))
def test_mask_aware_condition_keeps_exactly_the_unmasked_pixels(k, h8, w8, seed, density):
    t, h, w = 4 * k + 1, 8 * h8, 8 * w8
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(t, 3, h, w, generator=g) * 2 - 1
    edit = (torch.rand(t, h, w, generator=g) < density).float()
    first = torch.rand(3, h, w, generator=g) * 2 - 1
    sample = conditioning.mask_aware_condition(video, edit, first, "x")
    keep = sample.keep_mask
    assert torch.equal(keep[0], torch.ones(h, w)) and torch.equal(keep[1:], 1 - edit[1:])
    assert torch.equal(sample.condition_video[0], first)
    later = sample.condition_video[1:]
    assert torch.equal(later * (1 - keep[1:, None]), torch.zeros_like(later))  # edited pixels are blank
    assert torch.equal(later * keep[1:, None], video[1:] * keep[1:, None])  # the rest is the input
    lat = wan_layout.latent_keep_mask(keep, 8, 4)
    assert lat.shape == (4, k + 1, h8, w8) and bool(((lat == 0) | (lat == 1)).all())


_FRAME_STATE = st.sampled_from(["empty", "full", "partial"])


@settings(max_examples=80, deadline=None)
@given(states=st.lists(_FRAME_STATE, min_size=1, max_size=8), allow_empty=st.booleans(), allow_full=st.booleans())
def test_mask_coverage_decisions(states, allow_empty, allow_full):
    """Frame 0 never counts; all later frames empty is always refused; the others need their escape hatch."""
    h = w = 8
    masks = torch.zeros(len(states) + 1, h, w)
    masks[0] = 1  # frame 0's mask is never used, whatever it is
    for i, state in enumerate(states, start=1):
        if state == "full":
            masks[i] = 1
        elif state == "partial":
            masks[i, 2:5, 3:6] = 1
    problems = mask_coverage_problems(masks, masks, list(range(len(states) + 1)), (w, h), Path("m"),
                                      allow_empty, allow_full)
    text = "\n".join(problems)
    if all(s == "empty" for s in states):
        assert len(problems) == 1 and "no pixel to edit in any frame" in text
        return
    assert ("--allow-empty-mask-frames" in text) == ("empty" in states and not allow_empty)
    assert ("--allow-full-mask-frames" in text) == ("full" in states and not allow_full)
    if "empty" in states and not allow_empty:  # frames are named by their source index
        assert f"source frames {states.index('empty') + 1}" in text


@settings(max_examples=60, deadline=None)
@given(vw=st.integers(8, 400), vh=st.integers(8, 400), scale=st.floats(0.25, 4.0), stretch=st.floats(0.5, 2.0))
def test_mask_size_check_accepts_any_resolution_of_the_same_aspect(vw, vh, scale, stretch):
    mw, mh = max(1, round(vw * scale * stretch)), max(1, round(vh * scale))
    video, masks = torch.zeros(2, 3, vh, vw), torch.zeros(2, mh, mw)
    same = abs((mw / mh) / (vw / vh) - 1) <= 0.01
    if same:
        media.check_masks_match(masks, video, "m")
    else:
        with pytest.raises(InputError, match="aspect ratio"):
            media.check_masks_match(masks, video, "m")


# ---- fuzz: corrupted files reach the user as InputError, never as anything else ------------------------


def _corruptions(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    """Seeded damage of the kinds disks, downloads and editors do: truncation, flipped bytes, zeroed headers."""
    out = [b"", data[:8], data[: len(data) // 2], b"\x00" * 64 + data[64:], data[::-1]]
    while len(out) < count:
        arr = np.frombuffer(data, dtype=np.uint8).copy()
        kind = rng.integers(0, 4)
        if kind == 0:  # random bytes flipped anywhere
            pos = rng.integers(0, len(arr), size=rng.integers(1, 32))
            arr[pos] ^= rng.integers(1, 256, size=len(pos), dtype=np.uint8)
        elif kind == 1:  # a zeroed run
            start = rng.integers(0, len(arr))
            arr[start:start + rng.integers(1, 256)] = 0
        elif kind == 2:  # truncated at a random point
            arr = arr[: rng.integers(1, len(arr))]
        else:  # a chunk duplicated in the middle
            a, b = sorted(rng.integers(0, len(arr), size=2))
            arr = np.concatenate([arr[:b], arr[a:b], arr[b:]])
        out.append(arr.tobytes())
    return out


def _check_video(result) -> None:
    frames, fps = result
    assert frames.dim() == 4 and frames.shape[1] == 3 and frames.shape[0] >= 1
    assert frames.dtype == torch.float32 and bool(torch.isfinite(frames).all())
    assert frames.min() >= -1 and frames.max() <= 1 and fps > 0


def _check_masks(masks) -> None:
    assert masks.dim() in (2, 3) and bool(((masks == 0) | (masks == 1)).all())


@pytest.mark.parametrize("source, readers", [
    ("video", [(media.read_video, _check_video), (media.read_masks, _check_masks)]),
    ("mask_png", [(media.read_masks, _check_masks), (media.read_mask_image, _check_masks)]),
    ("edited0", [(media.read_image, lambda img: _check_video((img[None], 1.0)))]),
])
def test_fuzzed_files_give_valid_tensors_or_input_error(clip_files, tmp_path, source, readers):
    path = clip_files["mask"] / "m5.png" if source == "mask_png" else clip_files[source]
    rng = np.random.default_rng(1234)
    for i, data in enumerate(_corruptions(path.read_bytes(), rng, 40)):
        bad = tmp_path / f"fuzz{i}{path.suffix}"
        bad.write_bytes(data)
        for read, check in readers:
            try:
                result = read(bad)
            except InputError as exc:
                assert str(bad) in str(exc) and "\n" not in str(exc)
                continue
            check(result)


def test_fuzzed_lora_files_give_input_error_only(files_lora, tmp_path):
    rng = np.random.default_rng(99)
    for i, data in enumerate(_corruptions(files_lora.read_bytes(), rng, 40)):
        bad = tmp_path / f"fuzz{i}.safetensors"
        bad.write_bytes(data)
        try:
            lora_io.read_lora(bad)
        except InputError as exc:
            assert str(bad) in str(exc)


@pytest.fixture(scope="module")
def files_lora(tmp_path_factory, wan21_dir) -> Path:
    from loraedit.backends.wan import DEFAULT_LORA_TARGETS, load_wan

    backend = load_wan(wan21_dir)
    settings_ = lora_io.LoraSettings(4, 4.0, DEFAULT_LORA_TARGETS, backend.fingerprint(), backend.kind)
    lora_io.add_lora(backend.pipe.transformer, settings_)
    path = tmp_path_factory.mktemp("lora") / "lora.safetensors"
    lora_io.save_lora(path, backend.pipe.transformer, settings_, extra={"expert": "transformer"})
    return path


# ---- out of GPU memory: advice, not a traceback ----------------------------------------------------------


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")


@pytest.mark.parametrize("command, method, doing, advice", [
    ("train", "predict", "training the LoRA", ["--low-cost", "fewer --frames (e.g. 5 instead of 9)",
                                              "smaller --size (e.g. 48x48 instead of 64x64)"]),
    ("sample", "generate", "sampling the edit", ["fewer --frames", "smaller --size"]),
])
def test_out_of_gpu_memory_names_what_to_try(wan21_dir, clip_files, tmp_path, capsys, monkeypatch, command, method,
                                             doing, advice):
    monkeypatch.setattr(WanBackend, method, _oom)
    argv = [command, "--model", str(wan21_dir), "--video", str(clip_files["video"]), "--mask",
            str(clip_files["mask"]), "--frames", "9", "--size", "64x64", "--quiet", "--cache-dir", str(tmp_path / "c")]
    if command == "train":
        argv += ["--out", str(tmp_path / "lora"), "--rank", "4", "--stage1-steps", "2"]
    else:
        argv += ["--mode", "no-lora", "--edited-first-frame", str(clip_files["edited0"]), "--out",
                 str(tmp_path / "o.mp4"), "--steps", "2"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"the GPU ran out of memory while {doing}" in err and "Traceback" not in err
    for tip in advice:
        assert tip in err, err
    if command == "sample":
        assert "--low-cost" not in err  # training-only advice is not offered for sampling
        assert not (tmp_path / "o.mp4").exists()


# ---- only safetensors, JSON and TOML are ever deserialised -----------------------------------------------


def test_nothing_in_the_package_can_unpickle_or_run_remote_code():
    forbidden = [
        (re.compile(r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
        (re.compile(r"^\s*(import|from)\s+(c?pickle|_pickle|dill|joblib|shelve|marshal)\b"), "a pickle-based module"),
        (re.compile(r"\b(pickle|dill|joblib|marshal)\.loads?\("), "unpickling"),
        (re.compile(r"trust_remote_code\s*=\s*True"), "trust_remote_code=True"),
        (re.compile(r"allow_pickle\s*=\s*True"), "numpy allow_pickle=True"),
        (re.compile(r"(?<![.\w])(eval|exec)\("), "eval/exec"),
        (re.compile(r"use_safetensors\s*=\s*False"), "use_safetensors=False"),
    ]
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            found += [f"{path.relative_to(SRC)}:{n}: {why}" for pattern, why in forbidden if pattern.search(code)]
    assert found == []
    assert "use_safetensors=True" in (SRC / "backends" / "wan.py").read_text()
