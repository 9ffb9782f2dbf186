"""--extra-lora FILE[:WEIGHT]: LoRAs stacked beside the edit LoRA for sampling, on the tiny Wan2.1 folder.

Weight 0 gives the same video as no extra LoRA, weight 1 changes it, and the stacked weight change of
every adapted layer is the weighted sum of each LoRA's own.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

from loraedit import api, lora_io, media
from loraedit.backends.wan import DEFAULT_LORA_TARGETS, load_wan
from loraedit.backends.wan_lora import DIFFUSERS_TO_WAN
from loraedit.cli import main
from loraedit.cli.options import parse_extra_lora
from loraedit.sampling import attach_extra_loras
from loraedit.config import ExtraLora

FAST = ["--frames", "9", "--size", "64x64", "--quiet", "--steps", "3"]


def _random_state(transformer, targets, seed, rank=4):
    settings = lora_io.LoraSettings(rank, float(rank), targets)
    lora_io.add_lora(transformer, settings, adapter="tmp")
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * 0.5 for k, v in lora_io.lora_state(transformer, "tmp").items()}
    lora_io.remove_lora(transformer, "tmp")
    return state


@pytest.fixture(scope="module")
def loras(wan21_dir, tmp_path_factory):
    """The edit LoRA (loraedit's file), a musubi-layout extra (alpha 2 of rank 4) and an attention-only ComfyUI one."""
    root = tmp_path_factory.mktemp("loras")
    backend = load_wan(wan21_dir)
    t = backend.pipe.transformer
    settings = lora_io.LoraSettings(4, 8.0, DEFAULT_LORA_TARGETS, backend.fingerprint(), backend.kind)
    lora_io.add_lora(t, settings)
    lora_io.load_lora_state(t, _random_state(t, DEFAULT_LORA_TARGETS, 1))
    lora_io.save_lora(root / "edit.safetensors", t, settings)
    musubi = {}
    for key, value in _random_state(t, DEFAULT_LORA_TARGETS, 2).items():
        block, rest = key.split(".", 2)[1:]
        module, part = rest.rsplit(".lora_", 1)
        name = f"lora_unet_blocks_{block}_{DIFFUSERS_TO_WAN[module].replace('.', '_')}"
        musubi[f"{name}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value
        musubi[f"{name}.alpha"] = torch.tensor(2.0)
    save_file(musubi, str(root / "style.safetensors"))
    comfy = {}
    for key, value in _random_state(t, r"blocks\.\d+\.attn1\.to_[qkv]", 3).items():
        block, rest = key.split(".", 2)[1:]
        module, part = rest.rsplit(".lora_", 1)
        comfy[f"diffusion_model.blocks.{block}.{DIFFUSERS_TO_WAN[module]}.lora_{part}"] = value.to(torch.bfloat16)
    save_file(comfy, str(root / "distill.safetensors"))
    return {"edit": root / "edit.safetensors", "style": root / "style.safetensors",
            "distill": root / "distill.safetensors"}


def _deltas(path, weight):
    """Each module's weight change of a LoRA file at `weight`, from the file's own arithmetic."""
    state, settings = lora_io.read_lora(path)
    scale = weight * settings.alpha / settings.rank
    return {k[: -len(".lora_A.weight")]: scale * state[k.replace("lora_A", "lora_B")] @ v
            for k, v in state.items() if k.endswith("lora_A.weight")}


def test_stacked_weight_change_is_the_weighted_sum(wan21_dir, loras):
    backend = load_wan(wan21_dir)
    t = backend.transformer("transformer")
    lora_io.load_lora(loras["edit"], t, backend.fingerprint())
    scfg = api.SampleConfig(extra_loras=(ExtraLora(loras["style"], 0.5), ExtraLora(loras["distill"], 1.5)))
    attach_extra_loras(backend, scfg, edit_lora=True)
    want: dict[str, torch.Tensor] = {}
    for path, weight in ((loras["edit"], 1.0), (loras["style"], 0.5), (loras["distill"], 1.5)):
        for module, delta in _deltas(path, weight).items():
            want[module] = want.get(module, 0) + delta
    seen = 0
    with torch.no_grad():
        for name, module in t.named_modules():
            if isinstance(module, LoraLayer):
                eye = torch.eye(module.in_features)
                got = (module(eye) - module.base_layer(eye)).T  # [out, in]: the layer's whole weight change
                torch.testing.assert_close(got, want[name], rtol=1e-4, atol=1e-5)
                seen += 1
    assert seen == len(want) == 20


def _sample(wan21_dir, clip_files, tmp_path, name, loras, extras=()):
    inputs = api.ClipInputs(video=clip_files["video"], mask=clip_files["mask"], frames=9, size=(64, 64))
    opts = api.RunOptions(cache_dir=tmp_path / "cache", progress=False)
    return api.sample(str(wan21_dir), inputs, clip_files["edited0"], tmp_path / f"{name}.mp4", [loras["edit"]], opts,
                      api.SampleConfig(steps=3, extra_loras=tuple(extras))).video


def test_weight_zero_is_the_same_video_and_weight_one_changes_it(wan21_dir, clip_files, loras, tmp_path):
    plain = _sample(wan21_dir, clip_files, tmp_path, "plain", loras)
    zero = _sample(wan21_dir, clip_files, tmp_path, "zero", loras, [ExtraLora(loras["style"], 0.0)])
    one = _sample(wan21_dir, clip_files, tmp_path, "one", loras, [ExtraLora(loras["style"], 1.0)])
    assert torch.equal(plain, zero)
    assert (plain - one).abs().max() > 1e-3
    settings = json.loads((tmp_path / "one.metrics.json").read_text())["settings"]
    assert settings["extra_loras"] == [{"path": str(loras["style"]), "weight": 1.0, "layout": "musubi-tuner / kohya"}]


def test_cli_extra_lora_validated_from_the_header(wan21_dir, clip_files, loras, tmp_path, capsys):
    args = ["sample", "--model", str(wan21_dir), "--video", str(clip_files["video"]), "--mask",
            str(clip_files["mask"]), "--cache-dir", str(tmp_path / "cache"), "--edited-first-frame",
            str(clip_files["edited0"]), "--lora", str(loras["edit"]), *FAST]
    bad = tmp_path / "other_model.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 48),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(48, 4)}, str(bad))
    assert main([*args, "--extra-lora", f"{bad}:0.5", "--out", str(tmp_path / "bad.mp4")]) == 2
    err = capsys.readouterr().err
    assert "--extra-lora" in err and "ComfyUI / diffusion-pipe layout" in err and "does not fit" in err
    assert main([*args, "--extra-lora", f"{loras['distill']}:0.8", "--out", str(tmp_path / "ok.mp4")]) == 0
    err = capsys.readouterr().err
    assert "could not be verified" in err
    settings = json.loads((tmp_path / "ok.metrics.json").read_text())["settings"]
    assert settings["extra_loras"][0]["weight"] == 0.8


def test_parse_extra_lora():
    assert parse_extra_lora("a/b.safetensors") == ExtraLora(__import__("pathlib").Path("a/b.safetensors"), 1.0)
    assert parse_extra_lora("c:/x.safetensors:0.25").weight == 0.25
    assert parse_extra_lora("x.safetensors:-1").weight == -1.0
    with pytest.raises(Exception, match="FILE"):
        parse_extra_lora(":0.5")


def test_edit_trains_the_edit_lora_on_the_plain_base(wan21_dir, clip_files, loras, tmp_path):
    """`edit --extra-lora`: the LoRA it trains is bit for bit the one `edit` trains without it (extras attach
    only for sampling), while the video differs."""
    common = ["--model", str(wan21_dir), "--video", str(clip_files["video"]), "--mask", str(clip_files["mask"]),
              "--edited-first-frame", str(clip_files["edited0"]), *FAST,
              "--stage1-steps", "3", "--rank", "4", "--lr", "1e-3", "--checkpoint-every", "0"]
    plain, stacked = tmp_path / "plain.mp4", tmp_path / "stacked.mp4"
    # separate caches: the second run must train, not reuse the first one's finished stage 1
    assert main(["edit", *common, "--cache-dir", str(tmp_path / "c1"), "--out", str(plain)]) == 0
    assert main(["edit", *common, "--cache-dir", str(tmp_path / "c2"), "--extra-lora", f"{loras['style']}:1",
                 "--out", str(stacked)]) == 0
    a, _ = lora_io.read_lora(api.work_dir_for(plain) / "lora.safetensors")
    b, _ = lora_io.read_lora(api.work_dir_for(stacked) / "lora.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(media.read_video(plain)[0], media.read_video(stacked)[0])
    settings = json.loads(stacked.with_suffix(".metrics.json").read_text())["settings"]
    assert settings["extra_loras"][0]["layout"] == "musubi-tuner / kohya"
    assert "extra_loras" not in json.loads(plain.with_suffix(".metrics.json").read_text())["settings"]


def test_wan22_no_lora_mode_with_an_extra_lora_on_both_experts(wan22_dir, clip_files, loras, tmp_path):
    """Stock I2V plus a (say) distillation LoRA: no edit LoRA, the extra attached to both experts."""
    inputs = api.ClipInputs(video=clip_files["video"], mask=clip_files["mask"], frames=9, size=(64, 64))
    opts = api.RunOptions(mode="no-lora", cache_dir=tmp_path / "cache", progress=False)
    backend = api.load_backend(wan22_dir)
    attach_extra_loras(backend, api.SampleConfig(extra_loras=(ExtraLora(loras["style"], 0.5),)), edit_lora=False)
    for expert in backend.experts:
        layers = [m for m in backend.transformer(expert.name).modules() if isinstance(m, LoraLayer)]
        assert layers and all(m.active_adapters == ["extra_0"] for m in layers)
    videos = [api.sample(str(wan22_dir), inputs, clip_files["edited0"], tmp_path / f"{w}.mp4", [], opts,
                         api.SampleConfig(steps=2, extra_loras=extras)).video
              for w, extras in (("none", ()), ("zero", (ExtraLora(loras["style"], 0.0),)),
                                ("one", (ExtraLora(loras["style"], 1.0),)))]
    assert torch.equal(videos[0], videos[1]) and not torch.equal(videos[0], videos[2])
