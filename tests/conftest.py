"""Shared fixtures: tiny random-weight Wan model folders (built once per session) and a synthetic clip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from loraedit import media
from loraedit.toyworld.models import write_model_folder
from loraedit.toyworld.square import moving_square


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Never touch the user's ~/.cache: the toy model and encoded-cache go to a session temp folder."""
    os.environ["LORAEDIT_CACHE"] = str(tmp_path_factory.mktemp("loraedit-cache"))
    torch.set_num_threads(1)  # the test models are tiny: threads only add sync overhead


@pytest.fixture(scope="session")
def wan21_dir(tmp_path_factory) -> Path:
    return write_model_folder(tmp_path_factory.mktemp("models") / "wan21", "wan2.1")


@pytest.fixture(scope="session")
def wan22_dir(tmp_path_factory) -> Path:
    return write_model_folder(tmp_path_factory.mktemp("models") / "wan22", "wan2.2")


@pytest.fixture(scope="session")
def toy_clip():
    return moving_square(seed=3, frames=17, size=(64, 64))


@pytest.fixture(scope="session")
def clip_files(tmp_path_factory, toy_clip) -> dict[str, Path]:
    """The clip as a user brings it: an mp4, a folder of mask PNGs, an edited first frame PNG."""
    root = tmp_path_factory.mktemp("clip")
    media.write_video(root / "input.mp4", toy_clip.video, fps=16)
    for t in range(toy_clip.masks.shape[0]):
        media.write_image(root / "masks" / f"m{t}.png", toy_clip.masks[t])
    media.write_image(root / "edited0.png", toy_clip.edited_first_frame)
    media.write_image(root / "edited8.png", toy_clip.edited_video[8])
    return {"video": root / "input.mp4", "mask": root / "masks", "edited0": root / "edited0.png",
            "edited8": root / "edited8.png", "root": root}


@pytest.fixture(scope="session")
def hunyuan_dir(tmp_path_factory) -> Path:
    """A tiny random-weight HunyuanVideo-I2V (latent_concat) folder, as a real download is laid out."""
    from hunyuan_parts import write_hunyuan_folder

    return write_hunyuan_folder(tmp_path_factory.mktemp("models") / "hunyuan")
