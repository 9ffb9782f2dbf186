"""The public model folders, as published (tests/fixtures/models: real configs, stub weights), through validation.

Every other test builds tiny components from configs written here; these are the layouts a user downloads:
sharded weights with index files, Wan2.1's CLIP listed as CLIPVisionModelWithProjection, Wan2.2's
`image_encoder: [null, null]` and second transformer, and a model loraedit does not support. Nothing here
loads a weight: what is checked is exactly what `validate` reads before a run.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from loraedit import lora_io, perfmodel
from loraedit.backends.wan import DEFAULT_LORA_TARGETS
from loraedit.backends.wan_folder import lora_shapes, model_fingerprint, read_wan_folder
from loraedit.cli import main
from loraedit.errors import InputError

MODELS = Path(__file__).parent / "fixtures" / "models"
WAN21_480P = MODELS / "Wan2.1-I2V-14B-480P-Diffusers"
WAN21_720P = MODELS / "Wan2.1-I2V-14B-720P-Diffusers"
WAN22 = MODELS / "Wan2.2-I2V-A14B-Diffusers"
HUNYUAN = MODELS / "HunyuanVideo-I2V"

#: (folder, kind, experts, working size, CLIP tokens, fingerprint). The fingerprints are pinned: they key every
#: user's cache and LoRA files, so a change to what `model_fingerprint` hashes must be a deliberate one.
EXPECTED = [
    (WAN21_480P, "wan2.1-i2v", ("transformer",), (832, 480), 257, "4e9b1ec57b86a0b4"),
    (WAN21_720P, "wan2.1-i2v", ("transformer",), (1280, 720), 257, "529e65e89629a891"),
    (WAN22, "wan2.2-i2v", ("transformer", "transformer_2"), (832, 480), 0, "5a6a70c3ddf66a7e"),
]


def _copy(src: Path, dst: Path) -> Path:
    """The fixture with its files linked, so a test may delete or replace some without touching the original."""
    shutil.copytree(src, dst, copy_function=os.symlink)
    return dst


def _rewrite(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.unlink()
    path.write_text(json.dumps(data))


def _refusal(folder: Path) -> str:
    with pytest.raises(InputError) as info:
        read_wan_folder(folder)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


@pytest.mark.parametrize("folder, kind, experts, size, image_tokens, fingerprint", EXPECTED,
                         ids=[e[0].name for e in EXPECTED])
def test_each_published_wan_folder_is_read_right(folder, kind, experts, size, image_tokens, fingerprint):
    model = read_wan_folder(folder)
    assert (model.kind, model.experts, model.working_size) == (kind, experts, size)
    assert (model.default_frames, model.temporal_factor, model.spatial_factor, model.size_multiple) == (49, 4, 8, 16)
    assert model.latent_channels == 16 and model.patch_size == (1, 2, 2)
    assert model.image_tokens == image_tokens
    assert model.fingerprint == fingerprint
    if kind == "wan2.1-i2v":  # 0.33-era VAE configs carry no scale factors: the defaults are Wan's
        assert "scale_factor_spatial" not in json.loads((folder / "vae/config.json").read_text())


def test_working_size_comes_from_the_name_the_official_repositories_use(tmp_path):
    assert read_wan_folder(WAN21_720P).working_size_source == "the folder's name (Wan2.1-I2V-14B-720P-Diffusers)"
    assert read_wan_folder(WAN22).working_size_source == "default (Wan 480P)"
    # The Hugging Face cache keeps the repository's name two levels up; the snapshot itself is a commit hash.
    snapshot = _copy(WAN21_720P, tmp_path / "models--Wan-AI--Wan2.1-I2V-14B-720P-Diffusers" / "snapshots" / "8e65b2e")
    assert read_wan_folder(snapshot).working_size == (1280, 720)
    # loraedit_model.json still wins over the name.
    (snapshot / "loraedit_model.json").write_text(json.dumps({"working_size": [832, 480], "frames": 49}))
    assert read_wan_folder(snapshot).working_size == (832, 480)


def test_the_fingerprint_ignores_download_bookkeeping_but_not_configs(tmp_path):
    copy = _copy(WAN21_480P, tmp_path / "Wan2.1-I2V-14B-480P-Diffusers")
    meta = copy / ".cache" / "huggingface" / "download" / "transformer"
    meta.mkdir(parents=True)
    (meta / "diffusion_pytorch_model-00001-of-00014.safetensors.metadata").write_text("8e65b2e\netag\n1761.2\n")
    assert model_fingerprint(copy) == EXPECTED[0][-1]
    _rewrite(copy / "scheduler" / "scheduler_config.json", flow_shift=5.0)
    assert model_fingerprint(copy) != EXPECTED[0][-1]


def test_the_published_hunyuanvideo_i2v_layout_is_read_as_its_own_family(tmp_path):
    from loraedit.backends import read_model_folder

    folder = read_model_folder(HUNYUAN)
    assert (folder.kind, folder.working_size, folder.default_frames, folder.experts) == (
        "hunyuan-video-i2v", (624, 368), 49, ("transformer",))
    assert len(folder.lora_shapes("transformer", 16, folder.default_lora_targets)) > 0  # the real dimensions
    copy = _copy(HUNYUAN, tmp_path / "HunyuanVideo-I2V")  # the token_replace variant has no mask channel
    _rewrite(copy / "transformer" / "config.json", image_condition_type="token_replace", in_channels=16)
    with pytest.raises(InputError) as err:
        read_model_folder(copy)
    assert len(err.value.problems) == 1 and "token_replace" in err.value.problems[0]
    assert "latent_concat" in err.value.problems[0]


def test_a_missing_shard_is_refused_in_one_line(tmp_path):
    copy = _copy(WAN21_480P, tmp_path / "lost")
    (copy / "transformer" / "diffusion_pytorch_model-00007-of-00014.safetensors").unlink()
    assert _refusal(copy) == (f"model folder {copy}: transformer/ lacks 1 weight shard(s) its index lists (e.g. "
                              "diffusion_pytorch_model-00007-of-00014.safetensors): finish copying the model")


def test_a_text_to_video_folder_is_refused_in_one_line(tmp_path):
    """Wan2.1-T2V-14B-Diffusers' model_index.json (WanPipeline) and 16-channel transformer: one cause, one line."""
    copy = _copy(WAN21_480P, tmp_path / "t2v")
    _rewrite(copy / "model_index.json", _class_name="WanPipeline")
    _rewrite(copy / "transformer" / "config.json", in_channels=16, image_dim=None, added_kv_proj_dim=None)
    assert "holds a text-to-video model, not a Wan image-to-video model (WanPipeline in" in _refusal(copy)


def test_a_transformer_of_another_class_is_refused_in_one_line(tmp_path):
    copy = _copy(WAN22, tmp_path / "vace")
    _rewrite(copy / "model_index.json", transformer_2=["diffusers", "WanVACETransformer3DModel"])
    assert "lists transformer_2 as WanVACETransformer3DModel, not WanTransformer3DModel" in _refusal(copy)


def test_the_folders_people_give_instead_get_the_fix(tmp_path):
    cache_root = tmp_path / "models--Wan-AI--Wan2.1-I2V-14B-480P-Diffusers"
    snapshot = _copy(WAN21_480P, cache_root / "snapshots" / "6383bdc")
    assert f"is a Hugging Face cache entry, not the model: give its snapshot folder, e.g. {snapshot}" in \
        _refusal(cache_root)
    original = tmp_path / "Wan2.1-I2V-14B-480P"  # the non-diffusers release: .pth files and one config.json
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"model_type": "i2v", "dim": 5120}))
    (original / "Wan2.1_VAE.pth").write_bytes(b"")
    assert "is an original Wan release (.pth weights, no model_index.json)" in _refusal(original)


def test_lora_shapes_use_the_real_dimensions():
    for folder in (WAN21_480P, WAN22):
        model = read_wan_folder(folder)
        for expert in model.experts:
            shapes = lora_shapes(model, expert, 16, DEFAULT_LORA_TARGETS)
            assert len(shapes) == 40 * 10 * 2  # 40 blocks x (q k v o of both attentions + 2 ffn) x (A, B)
            assert shapes["blocks.0.attn1.to_q.lora_A.weight"] == (16, 5120)
            assert shapes["blocks.39.ffn.net.0.proj.lora_B.weight"] == (13824, 16)
            assert shapes["blocks.7.ffn.net.2.lora_A.weight"] == (16, 13824)
            assert not any("add_k_proj" in name for name in shapes)  # the authors leave the CLIP projections out
            dims = perfmodel.WanDims.from_folder(model, expert)
            assert sum(a * b for a, b in shapes.values()) == perfmodel.lora_parameters(dims, 16)


def _header_only_lora(path: Path, shapes: dict[str, tuple[int, int]], settings: lora_io.LoraSettings) -> Path:
    """A LoRA file with the real header and no written data (a sparse file): what `inspect_lora` reads."""
    tensors, offset = {}, 0
    for key, shape in sorted(lora_io.to_comfy({k: _Shape(v) for k, v in shapes.items()}, settings.alpha).items()):
        size = 2 * (shape.numel() if isinstance(shape, _Shape) else 1)
        tensors[key] = {"dtype": "BF16", "shape": list(shape.shape) if isinstance(shape, _Shape) else [],
                        "data_offsets": [offset, offset + size]}
        offset += size
    tensors["__metadata__"] = {"format": "pt", "loraedit": json.dumps(settings.__dict__),
                               "loraedit_extra": json.dumps({"expert": "transformer"})}
    header = json.dumps(tensors).encode()
    header += b" " * (-len(header) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + offset)
    return path


class _Shape:
    """Stands in for a tensor in `to_comfy`, which only renames keys (and makes the scalar alphas)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


def test_a_lora_header_is_checked_against_the_real_14b_shapes(tmp_path):
    model = read_wan_folder(WAN21_480P)
    settings = lora_io.LoraSettings(4, 4.0, DEFAULT_LORA_TARGETS, model.fingerprint, model.kind)
    shapes = lora_shapes(model, "transformer", 4, DEFAULT_LORA_TARGETS)
    good = lora_io.inspect_lora(_header_only_lora(tmp_path / "good.safetensors", shapes, settings))
    assert lora_io.lora_problems(good, shapes, model.fingerprint, "transformer") == []
    # a LoRA made for Wan2.1-1.3B (dim 1536, ffn 8960) on the 14B model: refused from its header
    small = {k: tuple(1536 if d == 5120 else 8960 if d == 13824 else d for d in v) for k, v in shapes.items()}
    wrong = lora_io.inspect_lora(_header_only_lora(tmp_path / "small.safetensors", small, settings))
    problems = lora_io.lora_problems(wrong, shapes, model.fingerprint, "transformer")
    assert len(problems) == 1 and "of another shape" in problems[0] and "model needs (4, 5120)" in problems[0]


def test_perfmodel_reads_the_folder_and_its_copy_of_the_14b_config_is_the_published_one():
    model = read_wan_folder(WAN21_480P)
    assert perfmodel.WanDims.from_folder(model) == perfmodel.WanDims.from_config(perfmodel.WAN21_I2V_14B)
    published = {k: v for k, v in model.transformer_configs["transformer"].items() if not k.startswith("_")}
    assert published == perfmodel.WAN21_I2V_14B
    wan22 = read_wan_folder(WAN22)
    for expert in wan22.experts:  # no CLIP: no image embedder, no image key/value projections
        dims = perfmodel.WanDims.from_folder(wan22, expert)
        assert dims.image_dim is None and dims.added_kv is None
        assert perfmodel.parameter_counts(dims)["total"] < perfmodel.parameter_counts(
            perfmodel.WanDims.from_folder(model))["total"]


def test_fixtures_stay_small():
    total = sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file())
    assert total < 1_000_000, total
