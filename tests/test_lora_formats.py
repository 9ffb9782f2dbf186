"""LoRA files from and for other tools: each foreign layout reads back to the same weight change, and the
file loraedit writes gives the same weight change under each reader's own arithmetic.

Foreign files are built here by renaming a loraedit LoRA's tensors the way each tool names them.
"""

from __future__ import annotations

import re

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import save_file

from loraedit import lora_io
from loraedit.backends.wan import DEFAULT_LORA_TARGETS, load_wan
from loraedit.backends.wan_lora import DIFFUSERS_TO_WAN
from loraedit.errors import InputError
from tiny_wan import tiny_wan_forward

RANK, ALPHA = 4, 8.0  # scale 2




@pytest.fixture(scope="module")
def trained(wan21_dir, tmp_path_factory):
    """A loraedit LoRA (rank 4, alpha 8) with random weights: its file, peft state and the output it gives."""
    backend = load_wan(wan21_dir)
    settings = lora_io.LoraSettings(RANK, ALPHA, DEFAULT_LORA_TARGETS, backend.fingerprint(), backend.kind)
    lora_io.add_lora(backend.pipe.transformer, settings)
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=g) * 0.5 for k, v in lora_io.lora_state(backend.pipe.transformer).items()}
    lora_io.load_lora_state(backend.pipe.transformer, state)
    path = tmp_path_factory.mktemp("lora") / "lora.safetensors"
    lora_io.save_lora(path, backend.pipe.transformer, settings)
    deltas = {name: m.get_delta_weight(lora_io.ADAPTER).detach().clone()
              for name, m in backend.pipe.transformer.named_modules() if isinstance(m, LoraLayer)}
    return {"path": path, "state": state, "expected": tiny_wan_forward(backend.pipe.transformer), "deltas": deltas}


def _modules(state):
    """peft module -> (A, B) of a peft state."""
    return {k[: -len(".lora_A.weight")]: (v, state[k.replace("lora_A", "lora_B")])
            for k, v in state.items() if k.endswith("lora_A.weight")}


def _original(module):
    block, name = re.match(r"^blocks\.(\d+)\.(.+)$", module).groups()
    return block, DIFFUSERS_TO_WAN[name]


def _write(path, tensors, dtype=torch.float32):
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(path))  # no loraedit metadata
    return path


# Each tool's names for the same LoRA: (A, B) already carry the scale, unless the layout writes an alpha.
def _authors(state):  # ComfyUI / diffusion-pipe / the LoRA-Edit authors: alpha = rank, no .alpha, bf16
    out = {}
    for module, (a, b) in _modules(state).items():
        block, name = _original(module)
        out[f"diffusion_model.blocks.{block}.{name}.lora_A.weight"] = a
        out[f"diffusion_model.blocks.{block}.{name}.lora_B.weight"] = b * (ALPHA / RANK)
    return out


def _comfy_down_up(state):  # ComfyUI / kijai with lora_down / lora_up and a per-module alpha
    out = {}
    for module, (a, b) in _modules(state).items():
        block, name = _original(module)
        out[f"diffusion_model.blocks.{block}.{name}.lora_down.weight"] = a
        out[f"diffusion_model.blocks.{block}.{name}.lora_up.weight"] = b
        out[f"diffusion_model.blocks.{block}.{name}.alpha"] = torch.tensor(ALPHA)
    return out


def _musubi(state):  # musubi-tuner / kohya
    out = {}
    for module, (a, b) in _modules(state).items():
        block, name = _original(module)
        key = f"lora_unet_blocks_{block}_{name.replace('.', '_')}"
        out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = a, b
        out[f"{key}.alpha"] = torch.tensor(ALPHA)
    return out


def _diffusers(state):  # diffusers' save_lora_weights: its own module names, alpha = rank
    return {f"transformer.{k}": v * (ALPHA / RANK) if "lora_B" in k else v for k, v in state.items()}


def _diffsynth(state):  # DiffSynth's training output: peft names on the original modules, no prefix
    out = {}
    for module, (a, b) in _modules(state).items():
        block, name = _original(module)
        out[f"blocks.{block}.{name}.lora_A.default.weight"] = a
        out[f"blocks.{block}.{name}.lora_B.default.weight"] = b * (ALPHA / RANK)
    return out


LAYOUTS = {"authors": (_authors, "ComfyUI / diffusion-pipe"), "comfy-alpha": (_comfy_down_up, "ComfyUI / diffusion-pipe"),
           "musubi": (_musubi, "musubi-tuner / kohya"), "diffusers": (_diffusers, "diffusers"),
           "diffsynth": (_diffsynth, "DiffSynth")}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_foreign_layout_loads_to_the_same_output(layout, trained, wan21_dir, tmp_path):
    rename, name = LAYOUTS[layout]
    path = _write(tmp_path / f"{layout}.safetensors", rename(trained["state"]))
    header = lora_io.inspect_lora(path)
    assert header.layout == name and header.settings.rank == RANK and header.settings.base_model == ""
    ours = load_wan(wan21_dir)
    lora_io.load_lora(path, ours.pipe.transformer, ours.fingerprint())
    torch.testing.assert_close(tiny_wan_forward(ours.pipe.transformer), trained["expected"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["comfy-alpha", "musubi", "authors"])
def test_foreign_layout_matches_diffusers_own_converter(layout, trained, wan21_dir, tmp_path):
    """The same file through diffusers' load_lora_weights (its Wan / musubi converters) gives our output."""
    path = _write(tmp_path / f"{layout}.safetensors", LAYOUTS[layout][0](trained["state"]))
    ours, theirs = load_wan(wan21_dir), load_wan(wan21_dir)
    lora_io.load_lora(path, ours.pipe.transformer, ours.fingerprint())
    theirs.pipe.load_lora_weights(str(path))
    torch.testing.assert_close(tiny_wan_forward(ours.pipe.transformer), tiny_wan_forward(theirs.pipe.transformer), rtol=1e-5, atol=1e-5)


def test_authors_bf16_file_without_metadata_reads_its_own_numbers(trained, tmp_path):
    path = _write(tmp_path / "authors.safetensors", _authors(trained["state"]), torch.bfloat16)
    state, settings = lora_io.read_lora(path)
    assert settings.rank == RANK and settings.alpha == RANK  # the scale is in lora_B: peft scale 1
    with safe_open(str(path), framework="pt") as f:
        b = f.get_tensor("diffusion_model.blocks.0.self_attn.q.lora_B.weight")
    torch.testing.assert_close(state["blocks.0.attn1.to_q.lora_B.weight"], b.float(), rtol=0, atol=0)


def test_partial_foreign_lora_adapts_only_its_modules(trained, wan21_dir, tmp_path):
    """An attention-only musubi LoRA (which diffusers' strict musubi converter refuses) reads fine."""
    state = {k: v for k, v in trained["state"].items() if ".attn1." in k}
    path = _write(tmp_path / "attn.safetensors", _musubi(state))
    header = lora_io.inspect_lora(path)
    assert {k.split(".")[2] for k in header.shapes} == {"attn1"}
    ours = load_wan(wan21_dir)
    lora_io.load_lora(path, ours.pipe.transformer, ours.fingerprint())
    adapted = {n for n, m in ours.pipe.transformer.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == {k.rsplit(".lora_", 1)[0] for k in state}


@pytest.mark.parametrize("keys, found", [
    ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 8)}, "lora_te_text_model"),
    ({"diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight": (4, 8)}, "double_blocks"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": (4, 8),
      "diffusion_model.blocks.0.norm3.diff": (8,)}, "norm3.diff"),
])
def test_unknown_layout_is_one_line_naming_what_was_found(keys, found, tmp_path):
    path = _write(tmp_path / "other.safetensors", {k: torch.zeros(s) for k, s in keys.items()})
    with pytest.raises(InputError) as exc:
        lora_io.inspect_lora(path)
    (line,) = exc.value.problems
    assert str(path) in line and found in line and "prefixes seen" in line and "\n" not in line


def test_half_a_module_and_mixed_ranks_are_refused(tmp_path):
    only_a = _write(tmp_path / "a.safetensors", {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 24)})
    with pytest.raises(InputError, match="has only lora_A of blocks.0.attn1.to_q"):
        lora_io.inspect_lora(only_a)
    mixed = _write(tmp_path / "m.safetensors", {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 24),
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(24, 4),
        "diffusion_model.blocks.0.self_attn.k.lora_A.weight": torch.zeros(8, 24),
        "diffusion_model.blocks.0.self_attn.k.lora_B.weight": torch.zeros(24, 8)})
    with pytest.raises(InputError, match=r"mixes ranks \[4, 8\]"):
        lora_io.inspect_lora(mixed)


# ---- the file loraedit writes, under each reader's arithmetic -------------------------------------------


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _diffsynth_deltas(tensors):
    """DiffSynth 1.1's GeneralLoRALoader: name = the key without lora_B / `default` / `diffusion_model` /
    `weight`; W += alpha_arg (1) * B @ A; `.alpha` keys are never read."""
    deltas = {}
    for key in tensors:
        if ".lora_B." not in key:
            continue
        parts = key.split(".")
        i = parts.index("lora_B")
        if len(parts) > i + 2:
            parts.pop(i + 1)
        parts.pop(i)
        if parts[0] == "diffusion_model":
            parts.pop(0)
        deltas[".".join(parts[:-1])] = 1.0 * tensors[key] @ tensors[key.replace(".lora_B.", ".lora_A.")]
    return deltas


def _authors_init_deltas(tensors, rank):
    """The authors' stage-2 init (diffusion-pipe's load_adapter_weights): every key, prefix stripped and
    `.weight` -> `.default.weight`, must be a LoRA parameter of their peft model (alpha = rank), else it raises."""
    deltas = {}
    for key, value in tensors.items():
        name = re.sub(r"^(transformer|diffusion_model)\.", "", key)
        if not re.fullmatch(r"blocks\.\d+\.[a-z_.0-9]+\.lora_[AB]\.weight", name):
            raise RuntimeError(f"modified_state_dict key {name} is not in the model parameters")
        if ".lora_B." in name:
            deltas[name.replace(".lora_B.weight", "")] = (rank / rank) * value @ tensors[key.replace("lora_B", "lora_A")]
    return deltas


def _comfy_deltas(tensors):
    """ComfyUI: `alpha / rank` when a `.alpha` key is there, else scale 1."""
    deltas = {}
    for key, up in tensors.items():
        if key.endswith(".lora_B.weight"):
            module = key[: -len(".lora_B.weight")]
            down = tensors[f"{module}.lora_A.weight"]
            alpha = tensors.get(f"{module}.alpha")
            scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
            deltas[module.removeprefix("diffusion_model.")] = scale * up @ down
    return deltas


def test_written_file_gives_peft_weight_change_in_every_reader(trained):
    tensors = _read(trained["path"])
    want = {f"{b}.{n}": trained["deltas"][f"blocks.{b}.{d}"] for d, n in DIFFUSERS_TO_WAN.items()
            for b in range(2) if f"blocks.{b}.{d}" in trained["deltas"]}
    want = {f"blocks.{k}": v for k, v in want.items()}
    for reader, deltas in (("DiffSynth", _diffsynth_deltas(tensors)), ("ComfyUI", _comfy_deltas(tensors)),
                           ("authors' init", _authors_init_deltas(tensors, RANK))):
        assert set(deltas) == set(want), reader
        for name, delta in want.items():
            torch.testing.assert_close(deltas[name], delta, rtol=1e-5, atol=1e-6, msg=f"{reader} {name}")


def test_old_alpha_file_is_still_read_and_is_what_diffsynth_misreads(trained, tmp_path):
    """Files written before the portable layout (`.alpha` keys, B unscaled) still load exactly; DiffSynth and
    the authors' init would get them wrong, which is why the portable file folds the scale."""
    old = lora_io.to_comfy(trained["state"], ALPHA)
    meta = safe_open(str(trained["path"]), framework="pt").metadata()
    path = tmp_path / "old.safetensors"
    save_file(old, str(path), metadata=meta)
    state, _ = lora_io.read_lora(path)
    torch.testing.assert_close(state, trained["state"], rtol=0, atol=0)
    with pytest.raises(RuntimeError):
        _authors_init_deltas(old, RANK)
    q = _diffsynth_deltas(old)["blocks.0.self_attn.q"]
    torch.testing.assert_close(q * (ALPHA / RANK), trained["deltas"]["blocks.0.attn1.to_q"], rtol=1e-5, atol=1e-6)


# ---- HunyuanVideo: the layout diffusers converts (original names, dense fused layers) -------------------


def test_hunyuan_fused_lora_of_another_tool_reads_as_diffusers_converter(hunyuan_dir, tmp_path):
    """A dense fused `img_attn_qkv` LoRA (diffusion-pipe's HunyuanVideo layout, no metadata): lora_A whole to
    q, k and v, lora_B cut into their rows, as diffusers' converter does; same output through both loaders."""
    from diffusers import HunyuanVideoImageToVideoPipeline
    from hunyuan_parts import build_components, transformer_inputs

    from loraedit.backends.hunyuan_folder import read_hunyuan_folder

    ours = build_components()["transformer"]
    block = ours.transformer_blocks[0]
    hidden, rank, g = block.attn.to_q.in_features, 4, torch.Generator().manual_seed(5)
    tensors = {}
    for i in range(len(ours.transformer_blocks)):
        for name, out in (("img_attn_qkv", 3 * hidden), ("txt_attn_qkv", 3 * hidden), ("img_attn_proj", hidden)):
            tensors[f"diffusion_model.double_blocks.{i}.{name}.lora_A.weight"] = torch.randn(rank, hidden, generator=g)
            tensors[f"diffusion_model.double_blocks.{i}.{name}.lora_B.weight"] = torch.randn(out, rank, generator=g) * .3
    path = _write(tmp_path / "hunyuan.safetensors", tensors)
    header = lora_io.inspect_lora(path)
    assert header.layout == "HunyuanVideo ComfyUI / diffusion-pipe" and header.settings.rank == rank
    assert header.shapes == read_hunyuan_folder(hunyuan_dir).lora_shapes("transformer", rank, header.settings.targets)
    lora_io.load_lora(path, ours, "")
    pipe = HunyuanVideoImageToVideoPipeline(**build_components())  # the same seeded base weights
    pipe.load_lora_weights(str(path))
    inputs = transformer_inputs(g)
    with torch.no_grad():
        got, theirs = ours(**inputs)[0], pipe.transformer(**inputs)[0]
        lora_io.remove_lora(ours)
        base = ours(**inputs)[0]
    assert (got - base).abs().max() > 1e-3
    torch.testing.assert_close(got, theirs, rtol=1e-5, atol=1e-5)
