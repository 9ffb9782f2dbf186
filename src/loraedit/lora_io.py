"""LoRA files: peft adapters on a transformer <-> safetensors with ComfyUI-style keys.

Each model family owns its file layout (`backends.base.LoraKeyMap`, found through the registry by the
kind the file records): Wan's is `diffusion_model.blocks.N.self_attn.q.lora_A.weight` / `lora_B.weight`,
HunyuanVideo's is its original module names (`backends/hunyuan_lora.py`). This module only ever handles
peft names. The LoRA's own settings (rank, alpha, targets, base model) travel in the file's metadata and a
JSON sidecar, so a LoRA trained for another model or rank is refused with a clear message instead of
loading into the wrong shapes.

The file is portable: the scale alpha / rank is folded into lora_B and no `.alpha` key is written, so every
reader applies the same weight change: diffusers and ComfyUI (scale 1 without an alpha), DiffSynth (which
ignores `.alpha` and adds B @ A) and the LoRA-Edit authors' stage-2 init (diffusion-pipe's loader, which
refuses any key that is not a LoRA matrix). Files written before (with `.alpha`, B unscaled) still read.
Wan LoRAs of other tools (no loraedit metadata) are read through `lora_formats`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import save_file

from . import lora_formats
from .backends import lora_key_map
from .errors import InputError
from .media import atomic_path

ADAPTER = "loraedit"


@dataclass(frozen=True)
class LoraSettings:
    """What defines a LoRA's shapes and scale, and the model it belongs to."""

    rank: int = 16
    alpha: float = 16.0
    targets: str = ""  # peft regex over module names
    base_model: str = ""  # the backend's fingerprint (see WanBackend.fingerprint)
    base_kind: str = ""  # e.g. "wan2.1-i2v"

    def peft_config(self) -> LoraConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=self.targets,
                          init_lora_weights=True)


def add_lora(transformer: torch.nn.Module, settings: LoraSettings, *, dtype: torch.dtype | None = None,
             device: torch.device | None = None, adapter: str = ADAPTER) -> None:
    """Attach a fresh trainable LoRA (B = 0, so the model is unchanged until trained).

    A is drawn here (peft's own init: Kaiming-uniform, a = sqrt(5)) on the CPU in float32 from the global
    random state, so a LoRA starts from the same numbers whatever the base's device and storage. peft
    would put the new weights in the adapted layer's dtype and device: float8 with an fp8 base (layerwise
    casting), the CPU with an offloaded base. `dtype` / `device` say where they compute instead (default:
    the adapted layer's, as peft does). `adapter`: its peft name (another name stacks a second LoRA beside
    the edit LoRA; `stack_adapters` then says which are active and with what weight).
    """
    transformer.add_adapter(settings.peft_config(), adapter_name=adapter)
    transformer.set_adapter(adapter)
    for module in transformer.modules():
        if not (isinstance(module, LoraLayer) and adapter in module.lora_A):
            continue
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        init = torch.empty(a.shape, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(init, a=math.sqrt(5))
        a.data = init.to(device or a.device, dtype or a.dtype)
        b.data = torch.zeros(b.shape, device=device or b.device, dtype=dtype or b.dtype)


def remove_lora(transformer: torch.nn.Module, adapter: str = ADAPTER) -> None:
    """Detach the LoRA, leaving the base model exactly as loaded."""
    transformer.delete_adapters(adapter)


def stack_adapters(transformer: torch.nn.Module, weights: dict[str, float]) -> None:
    """Make exactly these adapters active, each at its weight (a multiplier of its own alpha / rank): the edit
    LoRA beside step-distillation or style LoRAs. peft adds each active adapter's B @ A x times its scale, so
    the weight change is the weighted sum of the LoRAs' own (diffusers' `set_adapters`)."""
    transformer.set_adapters(list(weights), list(weights.values()))


def lora_state(transformer: torch.nn.Module, adapter: str = ADAPTER) -> dict[str, torch.Tensor]:
    """The adapter's weights under peft's names (`blocks.N.attn1.to_q.lora_A.weight`)."""
    return {k: v.detach().float().cpu().contiguous()
            for k, v in get_peft_model_state_dict(transformer, adapter_name=adapter).items()}


def load_lora_state(transformer: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put peft-named weights back into the attached adapter, refusing any missing or extra key."""
    detail = _shape_mismatch({k: tuple(v.shape) for k, v in lora_state(transformer).items()},
                             {k: tuple(v.shape) for k, v in state.items()})
    if detail:
        raise InputError(f"checkpoint LoRA does not fit this model: {detail}: resume with the same command")
    set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)


def to_comfy(state: dict[str, torch.Tensor], alpha: float, kind: str = "") -> dict[str, torch.Tensor]:
    """peft names -> the file keys of the family of `kind` (default: Wan's, with one scalar `.alpha` per module)."""
    rank = next((int(v.shape[0]) for k, v in state.items() if k.endswith("lora_A.weight")), 0)
    return lora_key_map(kind).to_file(state, rank, alpha)


def from_comfy(comfy: dict[str, torch.Tensor], path: Path, kind: str = "", rank: int = 0,
               alpha: float = 0.0) -> dict[str, torch.Tensor]:
    """File keys -> peft names (Wan's alphas are checked by `read_lora`: they must match the settings)."""
    return lora_key_map(kind).from_file(comfy, path, rank, alpha)


@dataclass(frozen=True)
class LoraHeader:
    """What a LoRA file says about itself, read from its safetensors header only (no tensor data)."""

    path: Path
    settings: LoraSettings
    shapes: dict[str, tuple[int, ...]]  # peft names -> shape of every lora_A / lora_B weight
    expert: str | None  # the transformer it was trained for ("transformer" / "transformer_2"), if recorded
    foreign: lora_formats.ForeignLora | None = None  # another tool's Wan LoRA (no loraedit metadata)

    @property
    def layout(self) -> str:
        """How messages and the result's settings name the file's layout."""
        return self.foreign.layout if self.foreign is not None else "loraedit"


def save_lora(path: Path, transformer: torch.nn.Module, settings: LoraSettings, extra: dict | None = None) -> None:
    """Write the adapter as portable ComfyUI-keyed safetensors (+ `<path>.json` sidecar), atomically.

    `extra` (e.g. which expert) goes into both the sidecar and the file's metadata, so validation can
    check a file that travelled without its sidecar. Portable (module doc): alpha / rank folded into
    lora_B, no `.alpha` keys; the metadata keeps the trained alpha, which `read_lora` divides out again.
    """
    path = Path(path)
    meta = {"loraedit": json.dumps(asdict(settings)), "loraedit_extra": json.dumps(extra or {}), "format": "pt",
            "loraedit_layout": "portable: alpha / rank folded into lora_B"}
    tensors = portable(lora_key_map(settings.base_kind).to_file(lora_state(transformer), settings.rank,
                                                                 settings.alpha))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    sidecar = path.with_suffix(path.suffix + ".json")
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps({**asdict(settings), **(extra or {})}, indent=2))


def portable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A file's tensors with every `<module>.alpha` folded into `<module>.lora_B.weight` (times alpha / rank)
    and dropped: the same weight change for readers that apply alpha and for those that ignore it."""
    out = {k: v for k, v in tensors.items() if not k.endswith(".alpha")}
    for key, alpha in tensors.items():
        if key.endswith(".alpha"):
            module = key[: -len(".alpha")]
            rank = tensors[f"{module}.lora_A.weight"].shape[0]
            if float(alpha) != rank:
                out[f"{module}.lora_B.weight"] = out[f"{module}.lora_B.weight"] * (float(alpha) / rank)
    return out


def inspect_lora(path: Path) -> LoraHeader:
    """Names, shapes and settings of a LoRA file, from its header alone: nothing is deserialised but JSON."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"LoRA file {path} does not exist: train one with `loraedit train` first")
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"LoRA file {path} is not a .safetensors file: loraedit reads LoRAs only as safetensors "
                         "(pickle formats such as .ckpt/.pt/.bin can run code when opened); convert it")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise InputError(f"LoRA file {path} is not a readable safetensors file ({type(exc).__name__}): "
                         "re-export it or train again") from None
    if "loraedit" not in meta:  # another tool's LoRA: its layout from its names, its rank from its shapes
        foreign = lora_formats.read_header(path, shapes)
        settings = LoraSettings(foreign.rank, float(foreign.rank), foreign.targets)
        return LoraHeader(path, settings, foreign.shapes, None, foreign)
    try:
        settings = LoraSettings(**json.loads(meta["loraedit"]))
        extra = json.loads(meta.get("loraedit_extra", "{}"))
    except (ValueError, TypeError):
        raise InputError(f"LoRA file {path} has damaged loraedit settings in its metadata: train it again") from None
    # The layout of the family it was trained for (Wan's for a file that records no kind); it refuses keys
    # it cannot place.
    peft_shapes = lora_key_map(settings.base_kind).peft_shapes(shapes, path)
    expert = extra.get("expert") if isinstance(extra, dict) else None
    return LoraHeader(path, settings, peft_shapes, expert)


def lora_problems(header: LoraHeader, expected: dict[str, tuple[int, ...]], base_model: str,
                  expert: str | None = None) -> list[str]:
    """Why the LoRA described by `header` cannot be attached to a model with these `expected` shapes."""
    path, settings = header.path, header.settings
    if settings.base_model and base_model and settings.base_model != base_model:
        return [f"LoRA file {path} was trained for another base model ({settings.base_kind or 'unknown kind'}, "
                f"fingerprint {settings.base_model}; this one is {base_model}): train it on this model"]
    ranks = sorted({shape[0] for name, shape in header.shapes.items() if name.endswith("lora_A.weight")})
    if ranks and ranks != [settings.rank]:
        return [f"LoRA file {path} says rank {settings.rank} but its weights have rank {', '.join(map(str, ranks))}: "
                "the file was altered; re-export it or train again"]
    problems = []
    if expert is not None and header.expert is not None and header.expert != expert:
        problems.append(f"LoRA file {path} was trained for the {header.expert} expert but is given for {expert}: "
                        "pass lora.safetensors first, then lora_2.safetensors")
    detail = _shape_mismatch(expected, header.shapes)
    if detail and header.foreign is not None:
        problems.append(f"LoRA file {path} ({header.layout} layout) does not fit this model: {detail}: it was made "
                        "for another model (e.g. Wan 1.3B vs 14B, or a module this model lacks); use a LoRA for this one")
    elif detail:
        problems.append(f"LoRA file {path} does not fit this model: {detail}: use a LoRA trained on this model "
                        "with the same rank and targets")
    return problems


def unverified_base_note(header: LoraHeader) -> str | None:
    """The note a LoRA of another tool gets: its shapes fit, but nothing records which base it was trained on."""
    if header.foreign is None:
        return None
    return (f"LoRA file {header.path} ({header.layout} layout, rank {header.settings.rank}) records no base model: "
            "its names and shapes fit this model, but that it was trained on this base could not be verified")


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], LoraSettings]:
    """Read a LoRA file: peft-named weights and its settings (header checked first).

    A file of another tool comes with each module's alpha / rank folded into lora_B and settings of
    alpha = rank, so it applies at peft scale 1 as its tool meant.
    """
    header = inspect_lora(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            comfy = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise InputError(f"LoRA file {path} is damaged ({type(exc).__name__}): re-export it or train again") from None
    if header.foreign is not None:
        return lora_formats.to_peft(header.foreign, comfy, path), header.settings
    alphas = {float(v) for k, v in comfy.items() if k.endswith(".alpha")}
    if alphas - {float(header.settings.alpha)}:
        raise InputError(f"LoRA file {path} has per-module alpha {sorted(alphas)} but its settings say "
                         f"{header.settings.alpha}: the file was altered; re-export it or train again")
    settings = header.settings
    return lora_key_map(settings.base_kind).from_file(comfy, path, settings.rank, settings.alpha), settings


def load_lora(path: Path, transformer: torch.nn.Module, base_model: str, *, dtype: torch.dtype | None = None,
              device: torch.device | None = None, adapter: str = ADAPTER) -> LoraSettings:
    """Attach the LoRA in `path` to `transformer`, after checking its names and shapes against it.

    The check runs on the file's header, before any tensor is read; on any failure the transformer is
    left as it was. `dtype` / `device`: where the LoRA computes (see `add_lora`); `adapter`: its peft name.
    """
    header = inspect_lora(path)
    add_lora(transformer, header.settings, dtype=dtype, device=device, adapter=adapter)
    try:
        expected = {k: tuple(v.shape) for k, v in lora_state(transformer, adapter).items()}
        problems = lora_problems(header, expected, base_model)
        if problems:
            raise InputError(*problems)
        state, settings = read_lora(path)
        set_peft_model_state_dict(transformer, state, adapter_name=adapter)
    except BaseException:
        remove_lora(transformer, adapter)
        raise
    return settings


def _shape_mismatch(expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]) -> str:
    """'' when `got` has exactly the names and shapes of `expected`, else a one-line summary of the difference."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in expected.keys() & got.keys() if tuple(expected[k]) != tuple(got[k]))
    if not (missing or extra or wrong):
        return ""
    parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
             f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
             f"{len(wrong)} of another shape (e.g. {wrong[0]}: {tuple(got[wrong[0]])}, model needs "
             f"{tuple(expected[wrong[0]])})" if wrong else ""]
    return ", ".join(p for p in parts if p)
