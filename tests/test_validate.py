"""Bad input gets a clear error before any model loads: the catalogue, run through the command line.

Every case runs `loraedit.cli.main` in-process with model loading replaced by a failure, so a case
that got past validation would show up as exit code 1 ("internal error"), not as a pass. Each case
checks the exit code, that the message names the problem, and that no traceback is printed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from loraedit import api, lora_io, media, validate
from loraedit.backends.wan import DEFAULT_LORA_TARGETS, load_wan
from loraedit.backends.wan_folder import PIPELINE_CLASSES, lora_shapes, read_wan_folder
from loraedit.cli import main
from loraedit.errors import InputError

# ---- the broken inputs, written once -------------------------------------------------------------------


def _png(path: Path, arr) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return path


def _mask_folder(root: Path, masks: torch.Tensor) -> Path:
    for t in range(masks.shape[0]):
        _png(root / f"m{t}.png", masks[t].numpy() * 255)
    return root


def _model_copy(src: Path, dst: Path, edit: Callable[[Path], None]) -> Path:
    """The toy model with weights linked (not copied) and `edit` applied to the copy's files."""
    shutil.copytree(src, dst, copy_function=os.symlink)
    edit(dst)
    return dst


def _rewrite_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.unlink()
    path.write_text(json.dumps(data))


def _write_lora(path: Path, folder, expert: str = "transformer", rank: int = 4, *, meta_rank: int | None = None,
                base_model: str | None = None, in_dim_extra: int = 0, metadata: bool = True) -> Path:
    """A LoRA file as `loraedit train` writes it (zeros), optionally altered; no model is loaded."""
    state = {}
    for name, shape in lora_shapes(folder, expert, rank, DEFAULT_LORA_TARGETS).items():
        if name.endswith("lora_A.weight"):
            shape = (shape[0], shape[1] + in_dim_extra)
        state[name] = torch.zeros(shape)
    settings = lora_io.LoraSettings(meta_rank or rank, 4.0, DEFAULT_LORA_TARGETS,
                                    folder.fingerprint if base_model is None else base_model, folder.kind)
    meta = {"format": "pt"}
    if metadata:
        meta |= {"loraedit": json.dumps(asdict(settings)), "loraedit_extra": json.dumps({"expert": expert})}
    save_file(lora_io.to_comfy(state, 4.0), str(path), metadata=meta)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, clip_files, toy_clip, wan21_dir, wan22_dir) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("bad")
    masks = toy_clip.masks  # [17, 64, 64]
    rng = np.random.default_rng(0)
    f = SimpleNamespace(**{**clip_files, "root": root}, model=wan21_dir, wan22=wan22_dir)

    f.corrupt_mp4 = root / "corrupt.mp4"
    f.corrupt_mp4.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    f.corrupt_png = root / "corrupt.png"
    f.corrupt_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    f.empty_dir = root / "empty"
    f.empty_dir.mkdir()
    f.one_frame = root / "one_frame.mp4"
    media.write_video(f.one_frame, toy_clip.video[:1])
    f.zero_frames = root / "zero_frames.mp4"
    container = av.open(str(f.zero_frames), mode="w", format="mp4")  # a stream, never a frame
    stream = container.add_stream("libx264", rate=16)
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    container.start_encoding()  # writes the header, which a container closed without frames never gets
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    f.mixed_sizes = root / "mixed"
    _png(f.mixed_sizes / "f1.png", np.zeros((64, 64, 3)))
    _png(f.mixed_sizes / "f2.png", np.zeros((48, 64, 3)))

    f.masks_9 = _mask_folder(root / "masks_9", masks[:9])
    f.masks_wide = _mask_folder(root / "masks_wide", masks[:, :32, :])
    f.masks_blank = _mask_folder(root / "masks_blank", torch.zeros_like(masks))
    some_empty = masks.clone()
    some_empty[[4, 8]] = 0
    f.masks_some_empty = _mask_folder(root / "masks_some_empty", some_empty)
    full = masks.clone()
    full[6] = 1
    f.masks_full = _mask_folder(root / "masks_full", full)
    top_only = torch.zeros_like(masks)
    top_only[:, :8, :8] = 1  # only in the rows a 64x32 centre crop removes
    f.masks_top_only = _mask_folder(root / "masks_top_only", top_only)
    f.masks_corrupt = _mask_folder(root / "masks_corrupt", masks)
    (f.masks_corrupt / "m3.png").write_bytes(b"not a png")

    f.wide_edit = _png(root / "wide_edit.png", np.full((64, 96, 3), 200))
    f.blank_mask = _png(root / "blank_mask.png", np.zeros((64, 64)))
    f.wide_mask = _png(root / "wide_mask.png", np.full((32, 64), 255))

    def index(change):
        return lambda d: _rewrite_json(d / "model_index.json", change)

    models = root / "models"
    f.model_missing_files = models / "missing_files"
    f.model_missing_files.mkdir(parents=True)
    shutil.copy(wan21_dir / "model_index.json", f.model_missing_files)
    f.model_t2v = _model_copy(wan21_dir, models / "t2v", index(lambda d: d.update(_class_name="WanPipeline")))
    f.model_16ch = _model_copy(wan21_dir, models / "16ch", lambda d: _rewrite_json(
        d / "transformer/config.json", lambda c: c.update(in_channels=16)))
    f.model_pickle = _model_copy(wan21_dir, models / "pickle", lambda d: (
        (d / "vae/diffusion_pytorch_model.safetensors").unlink(),
        (d / "vae/diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")))
    f.model_bad_json = _model_copy(wan21_dir, models / "bad_json", lambda d: (
        (d / "vae/config.json").unlink(), (d / "vae/config.json").write_text("{not json")))
    f.model_lost_shard = _model_copy(wan21_dir, models / "lost_shard", lambda d: (
        d / "text_encoder/model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})))
    f.model_custom_code = _model_copy(wan21_dir, models / "custom", index(lambda d: d.update(vae=["evil", "Vae"])))

    folder21, folder22 = read_wan_folder(wan21_dir), read_wan_folder(wan22_dir)
    loras = root / "loras"
    loras.mkdir()
    f.lora = _write_lora(loras / "good.safetensors", folder21)
    f.lora_corrupt = loras / "corrupt.safetensors"
    f.lora_corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    f.lora_pickle = loras / "lora.ckpt"
    f.lora_pickle.write_bytes(b"\x80\x04pickle")
    f.lora_unknown = loras / "unknown.safetensors"  # another model's LoRA: no Wan block names at all
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8)}, str(f.lora_unknown))
    f.lora_foreign_shapes = _write_lora(loras / "foreign.safetensors", folder21, metadata=False, in_dim_extra=8)
    f.lora_other_model = _write_lora(loras / "other_model.safetensors", folder21, base_model="0123456789abcdef")
    f.lora_altered_rank = _write_lora(loras / "altered_rank.safetensors", folder21, meta_rank=8)
    f.lora_wrong_shapes = _write_lora(loras / "wrong_shapes.safetensors", folder21, base_model="", in_dim_extra=8)
    f.lora22 = _write_lora(loras / "lora22.safetensors", folder22, "transformer")
    f.lora22_2 = _write_lora(loras / "lora22_2.safetensors", folder22, "transformer_2")

    f.toml_invalid = root / "invalid.toml"
    f.toml_invalid.write_text("frames = = 9\n")
    f.toml_unknown = root / "unknown.toml"
    f.toml_unknown.write_text("bogus_option = 3\n")
    f.a_file = root / "a_file"
    f.a_file.write_text("x")
    return f


# ---- the catalogue -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input: what to change in a valid command line, and what the user must see."""

    id: str
    command: str  # "sample", "train" or "edit"
    change: Callable[[SimpleNamespace], dict] = lambda f: {}  # option -> new value (None removes it)
    expect: str = ""  # substring of the message
    extra: Callable[[SimpleNamespace], list] = lambda f: []  # options appended
    code: int = 2
    setup: Callable | None = None  # (monkeypatch, tmp_path) -> None
    also: tuple[str, ...] = field(default=())  # further substrings (several problems at once)


def _tiny_disk(monkeypatch, tmp_path):
    monkeypatch.setattr("loraedit.diskspace.free_bytes", lambda path: 1 << 20)


def _earlier_checkpoint(monkeypatch, tmp_path):
    ckpt = tmp_path / "lora" / "checkpoints" / "ckpt-0000002"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")


CATALOGUE = [
    # unreadable or corrupt video / image, zero or one frame, fewer frames than asked
    Case("video missing", "sample", lambda f: {"--video": f.root / "nope.mp4"}, "--video: "),
    Case("video corrupt", "sample", lambda f: {"--video": f.corrupt_mp4}, "cannot read video"),
    Case("video with zero frames", "sample", lambda f: {"--video": f.zero_frames}, "has no video stream"),
    Case("frame folder empty", "sample", lambda f: {"--video": f.empty_dir}, "has no frame images"),
    Case("frame folder of mixed sizes", "sample", lambda f: {"--video": f.mixed_sizes}, "same size"),
    Case("video of one frame", "sample", lambda f: {"--video": f.one_frame}, "has only 1 frame"),
    Case("fewer frames than asked", "sample", lambda f: {"--frames": "21"}, "fewer than --frames 21"),
    Case("mask missing", "sample", lambda f: {"--mask": f.root / "nope"}, "--mask: "),
    Case("mask image corrupt", "sample", lambda f: {"--mask": f.masks_corrupt}, "cannot read image"),
    Case("edited first frame missing", "sample", lambda f: {"--edited-first-frame": f.root / "nope.png"},
         "--edited-first-frame: "),
    Case("edited first frame corrupt", "sample", lambda f: {"--edited-first-frame": f.corrupt_png},
         "cannot read image"),
    # masks against the video
    Case("mask count differs", "sample", lambda f: {"--mask": f.masks_9}, "has 9 frames but the video has 17"),
    Case("mask aspect differs", "sample", lambda f: {"--mask": f.masks_wide}, "aspect ratio"),
    Case("mask empty everywhere", "sample", lambda f: {"--mask": f.masks_blank}, "marks no pixel to edit"),
    Case("mask empty in some frames", "sample", lambda f: {"--mask": f.masks_some_empty},
         "--allow-empty-mask-frames"),
    Case("mask empty after the centre crop", "sample", lambda f: {"--mask": f.masks_top_only, "--size": "64x32"},
         "outside the centre crop"),
    Case("mask full in a frame", "sample", lambda f: {"--mask": f.masks_full}, "--allow-full-mask-frames"),
    # edited first frame of another aspect ratio
    Case("edited first frame of another aspect, --strict", "sample",
         lambda f: {"--edited-first-frame": f.wide_edit}, "another aspect ratio", lambda f: ["--strict"]),
    # frames and size against the model
    Case("frames not 4k+1", "sample", lambda f: {"--frames": "10"}, "not 4k+1"),
    Case("frames too few", "sample", lambda f: {"--frames": "1"}, "at least 5"),
    Case("frames zero", "sample", lambda f: {"--frames": "0"}, "--frames 0 is too few"),
    Case("frames negative", "sample", lambda f: {"--frames": "-5"}, "--frames -5 is too few"),
    Case("size zero", "sample", lambda f: {"--size": "0x0"}, "--size"),
    Case("steps zero", "sample", lambda f: {"--steps": "0"}, "--steps 0 is invalid"),
    Case("shift zero", "sample", lambda f: {"--shift": "0"}, "--shift 0.0 is invalid"),
    Case("rank zero", "train", lambda f: {"--rank": "0"}, "--rank 0 is invalid"),
    Case("lr zero", "train", lambda f: {"--lr": "0"}, "--lr 0.0 is invalid"),
    Case("stage1 steps zero", "train", lambda f: {"--stage1-steps": "0"}, "--stage1-steps 0 is invalid"),
    Case("timestep shift zero", "train", lambda f: {"--timestep-shift": "0"}, "--timestep-shift 0.0 is invalid"),
    Case("appearance augment negative", "train", lambda f: {"--appearance-augment": "-1"},
         "--appearance-augment -1 is invalid"),
    Case("paste feather negative", "sample", lambda f: {"--paste-feather": "-2"}, "--paste-feather -2 is invalid"),
    Case("size not a multiple of 16", "sample", lambda f: {"--size": "60x64"}, "multiple of 16"),
    Case("size not WIDTHxHEIGHT", "sample", lambda f: {"--size": "big"}, "is not WIDTHxHEIGHT"),
    # edited later frames
    Case("edited frame index out of range", "train", extra=lambda f: ["--edited-frame", f"30:{f.edited8}"],
         expect="outside the video"),
    Case("edited frame index 0", "train", extra=lambda f: ["--edited-frame", f"0:{f.edited8}"],
         expect="--edited-first-frame"),
    Case("edited frame given twice", "train",
         extra=lambda f: ["--edited-frame", f"8:{f.edited8}", "--edited-frame", f"8:{f.edited8}"], expect="twice"),
    Case("edited frame image corrupt", "train", extra=lambda f: ["--edited-frame", f"8:{f.corrupt_png}"],
         expect="cannot read image"),
    Case("edited frame mask empty", "train", extra=lambda f: ["--edited-frame", f"8:{f.edited8}:{f.blank_mask}"],
         expect="marks nothing to edit"),
    Case("edited frame mask of another aspect", "train",
         extra=lambda f: ["--edited-frame", f"8:{f.edited8}:{f.wide_mask}"], expect="aspect ratio"),
    Case("edited frame of another aspect, --strict", "train",
         extra=lambda f: ["--edited-frame", f"8:{f.wide_edit}", "--strict"], expect="another aspect ratio"),
    Case("edited frame spec malformed", "train", extra=lambda f: ["--edited-frame", "eight"],
         expect="IDX:IMAGE[:MASK]"),
    Case("edited frame with a mode that ignores it", "edit", lambda f: {"--mode": "naive"},
         extra=lambda f: ["--edited-frame", f"8:{f.edited8}"], expect="used only by mask-aware"),
    # the model folder
    Case("model folder missing", "sample", lambda f: {"--model": f.root / "no_model"}, "does not exist"),
    Case("model folder lacks files", "sample", lambda f: {"--model": f.model_missing_files}, "lacks"),
    Case("model of another kind (text-to-video)", "sample", lambda f: {"--model": f.model_t2v},
         "not a Wan image-to-video"),
    Case("model transformer not I2V", "sample", lambda f: {"--model": f.model_16ch}, "36"),
    Case("model weights only pickle", "sample", lambda f: {"--model": f.model_pickle}, "only pickle weights"),
    Case("model config not JSON", "sample", lambda f: {"--model": f.model_bad_json}, "not valid JSON"),
    Case("model weight shard missing", "sample", lambda f: {"--model": f.model_lost_shard}, "weight shard"),
    Case("model component from custom code", "sample", lambda f: {"--model": f.model_custom_code},
         "never runs code"),
    # LoRA files
    Case("LoRA missing", "sample", lambda f: {"--lora": f.root / "nope.safetensors"}, "does not exist"),
    Case("LoRA corrupt", "sample", lambda f: {"--lora": f.lora_corrupt}, "not a readable safetensors"),
    Case("LoRA is a pickle", "sample", lambda f: {"--lora": f.lora_pickle}, "is not a .safetensors file"),
    Case("LoRA in no known layout", "sample", lambda f: {"--lora": f.lora_unknown}, "prefixes seen: lora_te_text"),
    Case("foreign LoRA of other shapes", "sample", lambda f: {"--lora": f.lora_foreign_shapes},
         "(ComfyUI / diffusion-pipe layout) does not fit this model"),
    Case("extra LoRA of other shapes", "sample", extra=lambda f: ["--lora", f.lora, "--extra-lora",
                                                                   f"{f.lora_foreign_shapes}:0.5"],
         expect="--extra-lora: LoRA file"),
    Case("LoRA for another base model", "sample", lambda f: {"--lora": f.lora_other_model}, "another base model"),
    Case("LoRA altered to another rank", "sample", lambda f: {"--lora": f.lora_altered_rank},
         "says rank 8 but its weights have rank 4"),
    Case("LoRA of other shapes", "sample", lambda f: {"--lora": f.lora_wrong_shapes}, "does not fit this model"),
    Case("LoRA count differs from experts", "sample", extra=lambda f: ["--lora", f.lora], expect="needs as many"),
    Case("LoRA experts swapped (Wan2.2)", "sample",
         lambda f: {"--model": f.wan22, "--lora": f.lora22_2}, extra=lambda f: ["--lora", f.lora22],
         expect="trained for the transformer_2 expert"),
    Case("mask-aware sample without LoRA", "sample", lambda f: {"--lora": None},
         "error: --mode mask-aware needs a trained LoRA"),
    Case("LoRA given to a mode without LoRA", "sample", lambda f: {"--mode": "no-lora"}, "--lora is not used"),
    # disk, outputs, earlier runs
    Case("disk too small", "edit", setup=_tiny_disk, expect="free but this run needs about"),
    Case("output under a file", "sample", lambda f: {"--out": f.a_file / "out.mp4"}, "a_file is a file, not a folder"),
    Case("output video is a folder", "sample", lambda f: {"--out": f.root}, "is a folder"),
    Case("output video not .mp4", "sample", lambda f: {"--out": f.root / "out.mov"}, "ending in .mp4"),
    Case("earlier checkpoint without --resume", "train", setup=_earlier_checkpoint, expect="pass --resume"),
    # training and sampling options
    Case("rank not positive", "train", lambda f: {"--rank": "0"}, "--rank 0 is invalid"),
    Case("learning rate not positive", "train", extra=lambda f: ["--lr", "0"], expect="--lr 0.0 is invalid"),
    Case("no training steps", "train", extra=lambda f: ["--stage1-steps", "0"], expect="--stage1-steps 0"),
    Case("low-cost clip not 4k+1", "train", extra=lambda f: ["--low-cost", "--low-cost-clip-frames", "6"],
         expect="--low-cost-clip-frames 6"),
    Case("targets not a regex", "train", extra=lambda f: ["--targets", "blocks.(("], expect="not a regular expr"),
    Case("targets match no layer", "train", extra=lambda f: ["--targets", "nothing"], expect="matches no Linear"),
    Case("train with a mode that trains nothing", "train", extra=lambda f: ["--mode", "no-lora"],
         expect="trains no LoRA"),
    Case("sampling steps not positive", "sample", extra=lambda f: ["--steps", "0"], expect="--steps 0 is invalid"),
    Case("flow shift not positive", "sample", extra=lambda f: ["--shift", "0"], expect="--shift 0.0 is invalid"),
    Case("first-block cache negative", "sample", extra=lambda f: ["--first-block-cache", "-0.1"],
         expect="--first-block-cache -0.1 is invalid"),
    Case("taylorseer interval of one", "sample", extra=lambda f: ["--taylorseer", "1"],
         expect="--taylorseer 1 is invalid"),
    Case("two step caches", "sample", extra=lambda f: ["--taylorseer", "3", "--first-block-cache", "0.1"],
         expect="are two step caches: use one of them"),
    Case("train size not a multiple of 16", "train", extra=lambda f: ["--train-size", "40x40"],
         expect="--train-size 40x40 is not a multiple of 16 on both sides: use e.g. 32x32"),
    Case("train size above the working size", "train", extra=lambda f: ["--train-size", "128x128"],
         expect="is larger than the working size 64x64"),
    Case("train size fraction above one", "train", extra=lambda f: ["--train-size", "1.5"],
         expect="--train-size 1.5 is not a fraction of the working size in (0, 1]: use e.g. 0.5"),
    Case("train size neither WxH nor a fraction", "train", extra=lambda f: ["--train-size", "half"],
         expect="is not WIDTHxHEIGHT or a fraction"),
    Case("train size of another aspect", "train", extra=lambda f: ["--train-size", "48x16"],
         expect="has another aspect ratio than the working size 64x64: use e.g. 32x32"),
    # usage: options and config files
    Case("required option missing", "sample", lambda f: {"--video": None}, "required: --video"),
    Case("unknown option", "sample", extra=lambda f: ["--bogus"], expect="unrecognized arguments"),
    Case("config file not TOML", "sample", extra=lambda f: ["--config", f.toml_invalid], expect="not valid TOML"),
    Case("config file with an unknown key", "sample", extra=lambda f: ["--config", f.toml_unknown],
         expect="unknown option 'bogus_option'"),
    # all problems at once
    Case("several problems at once", "sample",
         lambda f: {"--frames": "10", "--mask": f.masks_9, "--lora": f.lora_corrupt},
         expect="3 problems with the input", also=("not 4k+1", "has 9 frames", "not a readable safetensors")),
]

#: The issue's list of bad inputs, each with the catalogue cases that cover it.
ISSUE_ITEMS = {
    "unreadable or corrupt video/image": ["video missing", "video corrupt", "mask image corrupt",
                                          "edited first frame corrupt", "edited frame image corrupt"],
    "zero or one frame": ["video with zero frames", "frame folder empty", "video of one frame"],
    "fewer frames than asked": ["fewer frames than asked"],
    "mask count or size not matching the video": ["mask count differs", "mask aspect differs"],
    "an empty mask in any frame": ["mask empty everywhere", "mask empty in some frames",
                                   "mask empty after the centre crop", "edited frame mask empty"],
    "a full mask in any frame": ["mask full in a frame"],
    "an edited first frame of another aspect ratio": ["edited first frame of another aspect, --strict"],
    "frames not 4k+1": ["frames not 4k+1", "frames too few"],
    "size not a multiple of 16": ["size not a multiple of 16"],
    "numeric options given as 0 or negative are refused, never read as unset (issue 16)": [
        "frames zero", "frames negative", "size zero", "steps zero", "shift zero", "rank zero", "lr zero",
        "stage1 steps zero", "timestep shift zero", "appearance augment negative", "paste feather negative"],
    "an edited later frame index out of range": ["edited frame index out of range", "edited frame index 0"],
    "a model folder missing files or of an unknown kind": ["model folder missing", "model folder lacks files",
                                                           "model of another kind (text-to-video)",
                                                           "model transformer not I2V", "model weight shard missing"],
    "a LoRA trained for another base model or rank": ["LoRA for another base model", "LoRA altered to another rank",
                                                      "LoRA of other shapes"],
    "a LoRA of another tool in no known layout or of other shapes, as --lora or --extra-lora (issue 16)": [
        "LoRA in no known layout", "foreign LoRA of other shapes", "extra LoRA of other shapes"],
    "disk too small for the cache": ["disk too small"],
}


def _argv(case: Case, f: SimpleNamespace, tmp_path: Path) -> list[str]:
    opts = {"--model": f.model, "--video": f.video, "--mask": f.mask, "--frames": "9", "--size": "64x64",
            "--cache-dir": tmp_path / "cache"}
    if case.command in ("sample", "edit"):
        opts["--edited-first-frame"] = f.edited0
        opts["--out"] = tmp_path / "out.mp4"
    if case.command == "sample":
        opts["--lora"] = f.lora
    if case.command in ("train", "edit"):
        opts["--rank"] = "4"
    if case.command == "train":
        opts["--out"] = tmp_path / "lora"
    opts.update(case.change(f))
    argv = [case.command, "--quiet"]
    for key, value in opts.items():
        if value is not None:
            argv += [key, str(value)]
    return argv + [str(v) for v in case.extra(f)]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


def _no_model_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the input was validated")


def test_catalogue_covers_every_bad_input_of_the_issue():
    ids = {c.id for c in CATALOGUE}
    assert len(ids) == len(CATALOGUE)
    for item, cases in ISSUE_ITEMS.items():
        assert cases and set(cases) <= ids, item


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.id for c in CATALOGUE])
def test_bad_input_is_refused_before_any_model_loads(case, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(api, "load_backend", _no_model_load)
    monkeypatch.setattr(api, "_load_backend", _no_model_load)
    if case.setup is not None:
        case.setup(monkeypatch, tmp_path)
    code = _run(_argv(case, files, tmp_path))
    err = capsys.readouterr().err
    assert code == case.code, err
    for text in (case.expect, *case.also):
        assert text in err, err
    assert "Traceback" not in err
    if code == 2 and "usage:" not in err:  # ours: a header line, then one line per problem
        lines = err.strip().splitlines()
        assert len(lines) == 1 or (lines[0].endswith("(nothing was loaded or run):")
                                   and all(line.startswith("  - ") for line in lines[1:]))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder_is_refused(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(api, "load_backend", _no_model_load)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code = _run(_argv(Case("x", "sample", lambda f: {"--out": locked / "o.mp4"}), files, tmp_path))
    assert code == 2 and "no permission to write in" in capsys.readouterr().err


def test_debug_shows_the_traceback_instead(files, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "load_backend", _no_model_load)
    with pytest.raises(InputError, match="not 4k\\+1"):
        main(_argv(Case("x", "sample", lambda f: {"--frames": "10"}), files, tmp_path) + ["--debug"])


# ---- what valid input gets -----------------------------------------------------------------------------


def _inputs(f, **kw) -> api.ClipInputs:
    return api.ClipInputs(video=f.video, mask=f.mask, frames=9, size=(64, 64), **kw)


def test_valid_input_passes_and_is_read_once_fitted(files, tmp_path):
    opts = api.RunOptions(cache_dir=tmp_path / "cache", train_prompt="a red square")
    later = api.EditedFrame(8, files.edited8, caption="the square, later")
    run = validate.check_run("edit", files.model, _inputs(files, edited_frames=(later,)),
                             opts, cfg=api.TrainConfig(rank=4), scfg=api.SampleConfig(),
                             edited_first_frame=files.edited0, video_out=tmp_path / "o.mp4",
                             train_dir=tmp_path / "o.work")
    assert run.clip.video.shape == (9, 3, 64, 64) and run.clip.masks.shape == (9, 64, 64)
    assert run.edited_first_frame.shape == (3, 64, 64)
    assert [e.index for e in run.edited_frames] == [8] and run.edited_frames[0].mask.sum() > 0
    assert run.edited_frames[0].caption == "the square, later"
    assert run.model.kind == "wan2.1-i2v" and run.notes == ()
    # Without its caption, stage 2 would train the frame on the training prompt: one note says so and how.
    bare = _inputs(files, edited_frames=(api.EditedFrame(8, files.edited8),))
    uncaptioned = validate.check_run("train", files.model, bare, opts, cfg=api.TrainConfig(rank=4),
                                     train_dir=tmp_path / "o.work")
    assert [n for n in uncaptioned.notes if "stage 2 trains edited frame(s) 8 on the training prompt" in n
            and "--edited-caption" in n]


def test_edited_image_of_another_aspect_is_fitted_with_a_note(files, tmp_path):
    run = validate.check_run("sample", files.model, _inputs(files), api.RunOptions(mode="no-lora"),
                             scfg=api.SampleConfig(), edited_first_frame=files.wide_edit, video_out=tmp_path / "o.mp4")
    assert run.edited_first_frame.shape == (3, 64, 64)
    (note,) = run.notes
    assert "is 96x64, the video 64x64" in note and "resized to 96x64 and centre-cropped to 64x64" in note
    assert "32 px cut from the left and right" in note and "--strict" in note


def test_training_without_a_caption_of_the_input_says_how_to_give_one(files, tmp_path):
    from loraedit.train import TrainConfig

    def notes(**opts):
        return validate.check_run("train", files.model, _inputs(files), api.RunOptions(prompt="a red square", **opts),
                                  cfg=TrainConfig(rank=4), train_dir=tmp_path / "lora").notes

    (note,) = notes()
    assert "the paper trains on a caption of the input's first frame" in note and "--train-prompt" in note
    assert "--caption florence2:DIR" in note
    assert notes(train_prompt="a blue square") == ()


@pytest.mark.parametrize("masks, flag", [("masks_some_empty", "allow_empty_mask_frames"),
                                         ("masks_full", "allow_full_mask_frames")])
def test_mask_escape_hatches(files, tmp_path, masks, flag):
    inputs = api.ClipInputs(video=files.video, mask=getattr(files, masks), frames=17, size=(64, 64))
    opts = api.RunOptions(mode="no-lora")
    with pytest.raises(InputError, match=flag.replace("_", "-")):
        validate.check_run("sample", files.model, inputs, opts, scfg=api.SampleConfig(),
                           edited_first_frame=files.edited0)
    allowed = api.ClipInputs(video=files.video, mask=getattr(files, masks), frames=17, size=(64, 64), **{flag: True})
    validate.check_run("sample", files.model, allowed, opts, scfg=api.SampleConfig(), edited_first_frame=files.edited0)


def test_empty_masks_of_frames_not_used_are_fine(files):
    """Frames 4 and 8 of 17 have empty masks; 5 uniformly picked frames (0, 4, 8, 12, 16) include them, 9 not all."""
    inputs = api.ClipInputs(video=files.video, mask=files.masks_some_empty, frames=5, size=(64, 64))
    with pytest.raises(InputError, match=r"2 of 4 frames after the first \(source frames 4, 8"):
        validate.check_run("sample", files.model, inputs, api.RunOptions(mode="no-lora"), scfg=api.SampleConfig(),
                           edited_first_frame=files.edited0)


def test_lora_shapes_from_configs_match_the_loaded_model(wan21_dir, wan22_dir):
    for model_dir in (wan21_dir, wan22_dir):
        backend = load_wan(model_dir)
        folder = read_wan_folder(model_dir)
        assert folder.experts == tuple(e.name for e in backend.experts)
        assert (folder.working_size, folder.default_frames) == (backend.working_size, backend.default_frames)
        settings = lora_io.LoraSettings(4, 4.0, DEFAULT_LORA_TARGETS)
        for expert in folder.experts:
            lora_io.add_lora(backend.transformer(expert), settings)
            real = {k: tuple(v.shape) for k, v in lora_io.lora_state(backend.transformer(expert)).items()}
            assert lora_shapes(folder, expert, 4, DEFAULT_LORA_TARGETS) == real


def test_a_lora_saved_by_training_passes_the_header_check(files, wan21_dir, tmp_path):
    backend = load_wan(wan21_dir)
    settings = lora_io.LoraSettings(4, 4.0, DEFAULT_LORA_TARGETS, backend.fingerprint(), backend.kind)
    lora_io.add_lora(backend.pipe.transformer, settings)
    path = tmp_path / "lora.safetensors"
    lora_io.save_lora(path, backend.pipe.transformer, settings, extra={"expert": "transformer"})
    folder = read_wan_folder(wan21_dir)
    header = lora_io.inspect_lora(path)
    assert header.expert == "transformer" and header.settings == settings
    assert lora_io.lora_problems(header, lora_shapes(folder, "transformer", 4, DEFAULT_LORA_TARGETS),
                                 folder.fingerprint, "transformer") == []


def test_pipeline_class_names_are_ours():
    from loraedit.backends.wan import MaskAwareWanImageToVideoPipeline

    assert MaskAwareWanImageToVideoPipeline.__name__ in PIPELINE_CLASSES
